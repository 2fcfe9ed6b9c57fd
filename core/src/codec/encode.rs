//! Encoder. Lengths are computed first so each packet is written once, straight into the
//! caller's buffer.

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;
use super::packet::{Ack, Packet, ProtocolVersion, Publish, QoS, ReasonOnly};
use super::properties::Properties;
use super::reason;
use super::wire::{put_binary, put_str, put_varint, varint_len};

const MAX_REMAINING: usize = 268_435_455;

fn field_ok(len: usize) -> Result<(), EncodeError> {
    if len > u16::MAX as usize {
        Err(EncodeError::FieldTooLong)
    } else {
        Ok(())
    }
}

fn check_properties(p: &Properties) -> Result<(), EncodeError> {
    for s in [
        &p.content_type,
        &p.response_topic,
        &p.assigned_client_identifier,
        &p.authentication_method,
        &p.response_information,
        &p.server_reference,
        &p.reason_string,
    ]
    .into_iter()
    .flatten()
    {
        field_ok(s.len())?;
    }
    for b in [&p.correlation_data, &p.authentication_data]
        .into_iter()
        .flatten()
    {
        field_ok(b.len())?;
    }
    for (k, v) in &p.user_properties {
        field_ok(k.len())?;
        field_ok(v.len())?;
    }
    if p.subscription_identifiers
        .iter()
        .any(|id| *id == 0 || *id as usize > MAX_REMAINING)
    {
        return Err(EncodeError::ValueOutOfRange);
    }
    Ok(())
}

fn check_fields(packet: &Packet) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => {
            field_ok(c.client_id.len())?;
            check_properties(&c.properties)?;
            if let Some(w) = &c.will {
                field_ok(w.topic.len())?;
                field_ok(w.payload.len())?;
                check_properties(&w.properties)?;
            }
            field_ok(c.username.as_ref().map_or(0, String::len))?;
            field_ok(c.password.as_ref().map_or(0, |p| p.len()))
        }
        Packet::Publish(_) => Ok(()),
        Packet::Subscribe(s) => {
            for (f, _) in &s.filters {
                field_ok(f.len())?;
            }
            check_properties(&s.properties)
        }
        Packet::Unsubscribe(u) => {
            for f in &u.filters {
                field_ok(f.len())?;
            }
            check_properties(&u.properties)
        }
        Packet::ConnAck(c) => check_properties(&c.properties),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            check_properties(&a.properties)
        }
        Packet::SubAck(s) => check_properties(&s.properties),
        Packet::UnsubAck(u) => check_properties(&u.properties),
        Packet::Disconnect(d) | Packet::Auth(d) => check_properties(&d.properties),
        Packet::PingReq | Packet::PingResp => Ok(()),
    }
}

/// A PUBLISH to encode without owning its parts: the broker sends one stored message to many
/// subscribers and should not copy it for each.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    pub packet_id: Option<u16>,
    pub properties: &'a Properties,
    pub payload: &'a [u8],
}

impl<'a> PublishRef<'a> {
    pub fn of(p: &'a Publish) -> PublishRef<'a> {
        PublishRef {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: &p.topic,
            packet_id: p.packet_id,
            properties: &p.properties,
            payload: &p.payload,
        }
    }

    fn remaining_len(&self, version: ProtocolVersion) -> usize {
        2 + self.topic.len()
            + if self.packet_id.is_some() { 2 } else { 0 }
            + if version.is_v5() {
                self.properties.encoded_len()
            } else {
                0
            }
            + self.payload.len()
    }

    /// Whole encoded size, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let rl = self.remaining_len(version);
        1 + varint_len(rl) + rl
    }

    /// Appends the encoded PUBLISH to `out`.
    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        field_ok(self.topic.len())?;
        check_properties(self.properties)?;
        let rl = self.remaining_len(version);
        if rl > MAX_REMAINING {
            return Err(EncodeError::PacketTooLarge);
        }
        out.reserve(1 + varint_len(rl) + rl);
        out.put_u8(
            0x30 | (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain),
        );
        put_varint(out, rl);
        put_str(out, self.topic);
        if let Some(id) = self.packet_id {
            out.put_u16(id);
        }
        if version.is_v5() {
            self.properties.encode(out);
        }
        out.put_slice(self.payload);
        Ok(())
    }
}

fn ack_has_tail(v5: bool, a: &Ack) -> (bool, bool) {
    let props = v5 && !a.properties.is_empty();
    (v5 && (a.reason != reason::SUCCESS || props), props)
}

/// DISCONNECT and AUTH: a reason code is always followed by a property length, even an
/// empty one. The spec lets it be left out, but some clients (rumqttc) cannot read that.
fn reason_only_tail(v5: bool, r: &ReasonOnly) -> (bool, bool) {
    let tail = v5 && (r.reason != reason::SUCCESS || !r.properties.is_empty());
    (tail, tail)
}

fn remaining_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let v5 = version.is_v5();
    let props = |p: &Properties| if v5 { p.encoded_len() } else { 0 };
    match packet {
        Packet::Connect(c) => {
            let v5c = c.version.is_v5();
            let propsc = |p: &Properties| if v5c { p.encoded_len() } else { 0 };
            2 + c.version.name().len()
                + 1
                + 1
                + 2
                + propsc(&c.properties)
                + 2
                + c.client_id.len()
                + c.will.as_ref().map_or(0, |w| {
                    propsc(&w.properties) + 2 + w.topic.len() + 2 + w.payload.len()
                })
                + c.username.as_ref().map_or(0, |u| 2 + u.len())
                + c.password.as_ref().map_or(0, |p| 2 + p.len())
        }
        Packet::ConnAck(c) => 2 + props(&c.properties),
        Packet::Publish(p) => PublishRef::of(p).remaining_len(version),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            let (reason, with_props) = ack_has_tail(v5, a);
            2 + usize::from(reason)
                + if with_props {
                    a.properties.encoded_len()
                } else {
                    0
                }
        }
        Packet::Subscribe(s) => {
            2 + props(&s.properties) + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>()
        }
        Packet::SubAck(s) => 2 + props(&s.properties) + s.reasons.len(),
        Packet::Unsubscribe(u) => {
            2 + props(&u.properties) + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
        }
        Packet::UnsubAck(u) => {
            2 + if v5 {
                u.properties.encoded_len() + u.reasons.len()
            } else {
                0
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(r) | Packet::Auth(r) => {
            let (reason, with_props) = reason_only_tail(v5, r);
            usize::from(reason)
                + if with_props {
                    r.properties.encoded_len()
                } else {
                    0
                }
        }
    }
}

/// The size of the whole encoded packet, fixed header included.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let rl = remaining_len(packet, version);
    1 + varint_len(rl) + rl
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => {
            0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
        }
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// Appends `packet`, encoded for a peer speaking `version`, to `out`. Properties are written
/// only for v5; a CONNECT is always encoded in its own version.
pub fn encode_packet(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    if let Packet::Publish(p) = packet {
        return PublishRef::of(p).encode(version, out);
    }
    check_fields(packet)?;
    let rl = remaining_len(packet, version);
    if rl > MAX_REMAINING {
        return Err(EncodeError::PacketTooLarge);
    }
    let v5 = version.is_v5();
    out.reserve(1 + varint_len(rl) + rl);
    out.put_u8(first_byte(packet));
    put_varint(out, rl);
    match packet {
        Packet::Connect(c) => {
            put_str(out, c.version.name());
            out.put_u8(c.version.level());
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            out.put_u8(flags);
            out.put_u16(c.keep_alive);
            if c.version.is_v5() {
                c.properties.encode(out);
            }
            put_str(out, &c.client_id);
            if let Some(w) = &c.will {
                if c.version.is_v5() {
                    w.properties.encode(out);
                }
                put_str(out, &w.topic);
                put_binary(out, &w.payload);
            }
            if let Some(u) = &c.username {
                put_str(out, u);
            }
            if let Some(p) = &c.password {
                put_binary(out, p);
            }
        }
        Packet::ConnAck(c) => {
            out.put_u8(u8::from(c.session_present));
            out.put_u8(c.code.0);
            if v5 {
                c.properties.encode(out);
            }
        }
        Packet::Publish(_) => {}
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            out.put_u16(a.packet_id);
            let (reason, with_props) = ack_has_tail(v5, a);
            if reason {
                out.put_u8(a.reason.0);
            }
            if with_props {
                a.properties.encode(out);
            }
        }
        Packet::Subscribe(s) => {
            out.put_u16(s.packet_id);
            if v5 {
                s.properties.encode(out);
            }
            for (f, o) in &s.filters {
                put_str(out, f);
                let mut b = o.qos as u8;
                if v5 {
                    b |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | (o.retain_handling & 3) << 4;
                }
                out.put_u8(b);
            }
        }
        Packet::SubAck(s) => {
            out.put_u16(s.packet_id);
            if v5 {
                s.properties.encode(out);
            }
            out.extend(s.reasons.iter().map(|r| r.0));
        }
        Packet::Unsubscribe(u) => {
            out.put_u16(u.packet_id);
            if v5 {
                u.properties.encode(out);
            }
            for f in &u.filters {
                put_str(out, f);
            }
        }
        Packet::UnsubAck(u) => {
            out.put_u16(u.packet_id);
            if v5 {
                u.properties.encode(out);
                out.extend(u.reasons.iter().map(|r| r.0));
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(r) | Packet::Auth(r) => {
            let (reason, with_props) = reason_only_tail(v5, r);
            if reason {
                out.put_u8(r.reason.0);
            }
            if with_props {
                r.properties.encode(out);
            }
        }
    }
    Ok(())
}
