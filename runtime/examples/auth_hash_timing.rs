//! How long one password verify takes per scheme on this machine; run it in release:
//! `cargo run --release -p tidemq-runtime --example auth_hash_timing`.
//! Each hash below accepts "password"; every run is checked.

use std::error::Error;
use std::time::Instant;

use tidemq_runtime::auth::{PasswordHash, hash_argon2id};

fn main() -> Result<(), Box<dyn Error>> {
    let ours = hash_argon2id(b"password")?;
    let cases: [(&str, String, u32); 6] = [
        ("argon2id m=19456 t=2 p=1 (tidemq passwd)", ours, 20),
        (
            "argon2id m=47104 t=1 p=1 (Mosquitto 2.1)",
            "$argon2id$v=19$m=47104,t=1,p=1$TU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTQ$yImeFM9XUcYfy8+XdtayQ+uzC935eV/RPhpjl7ZHUJI80Sk13aEFPOeZTuOmUqU7g8DuxY22d1exPuElrw/o2g".to_owned(),
            20,
        ),
        (
            "PBKDF2-SHA512 210000 ($7$, Mosquitto 2.1)",
            "$7$210000$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==$35iDAmLYTgrgq+wCe4YvYnAKeQvYVN0Fi2JtXeX6yFaqiDcWhgbB27/3aAL8cuA3mAHX2P5K60PbTVkkL5uG1w==".to_owned(),
            10,
        ),
        (
            "PBKDF2-SHA512 101 ($7$, Mosquitto 2.0)",
            // mosquitto_passwd 2.0.11, password "secret".
            "$7$101$GEge2aUsyT6WCxY+$avFlvfjesMzbsqibO4LwcEJTdimrknTLp9VdrEkqBYOhz+KjitG8A0BVga0hXf2OBC9tZ4oDC1xIGnAcEdzWVw==".to_owned(),
            2000,
        ),
        (
            "salted SHA-512 ($6$)",
            // mosquitto_passwd -H sha512, password "hunter2".
            "$6$viK7oio9kIv3NQxU$XiJL2JA3uftr9yslOv7yDbEbXvCwAByqAwMyTyK7LG6acghYI+yj0djaU+8Nkb430E9oUC7tuW/c4ig7K4aGsg==".to_owned(),
            20000,
        ),
        ("plaintext", "password".to_owned(), 20000),
    ];
    for (name, stored, runs) in cases {
        let hash = PasswordHash::parse(&stored)?;
        let good: &[u8] = match name {
            n if n.contains("Mosquitto 2.0") => b"secret",
            n if n.contains("$6$") => b"hunter2",
            _ => b"password",
        };
        if !hash.verify(good) {
            return Err(format!("{name}: the right password was refused").into());
        }
        let start = Instant::now();
        for _ in 0..runs {
            if hash.verify(b"wrong password") {
                return Err(format!("{name}: a wrong password was accepted").into());
            }
        }
        let per = start.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);
        println!("{name:<45} {per:>10.4} ms per verify ({runs} runs)");
    }
    Ok(())
}
