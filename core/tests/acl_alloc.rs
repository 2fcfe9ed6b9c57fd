//! An ACL check allocates nothing, whatever the rules use (placeholders, CIDR, `$share`,
//! subset and overlap tests), counted with a global allocator, per thread (the test harness
//! allocates on its own threads meanwhile).
#![allow(unsafe_code)] // a global allocator is an `unsafe impl`; it only counts and forwards
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use serde_json::json;
use tidemq_core::acl::{AclRules, Action, Decision, Who};

struct Counting;

thread_local! {
    // Const-initialised, no destructor: safe to touch from inside the allocator.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
}

fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn checks_do_not_allocate() {
    let rules = AclRules::from_json(
        &json!([
            {"permit": "deny", "action": "subscribe", "topics": ["$SYS/#", "@#"]},
            {"permit": "allow", "and": [{"username": "u1"}, {"ipaddrs": ["10.0.0.0/8", "2001:db8::/32"]}],
             "topics": ["dev/${clientid}/+/#", "user/${username}/x-${clientid}"]},
            {"permit": "allow", "or": [{"clientid": "c9"}, {"ipaddr": "::1"}], "topics": ["a/+"]},
            {"permit": "deny", "clientid": "#", "topics": ["secret/#"]},
        ]),
        Decision::Deny,
    )
    .unwrap();
    let whos = [
        Who {
            client_id: "c1",
            username: Some("u1"),
            ip: Some("::ffff:10.1.2.3".parse().unwrap()),
        },
        Who {
            client_id: "a+b",
            username: Some("u1"),
            ip: Some("10.0.0.1".parse().unwrap()),
        },
        Who {
            client_id: "c9",
            username: None,
            ip: None,
        },
    ];
    let subjects = [
        (Action::Subscribe, "#"),
        (Action::Subscribe, "$share/g/dev/c1/+/z"),
        (Action::Subscribe, "dev/+/x"),
        (Action::Subscribe, "secret/+"),
        (Action::Subscribe, "a/#/b"),
        (Action::Publish, "user/u1/x-c1"),
        (Action::Publish, "a/b"),
        (Action::Publish, "nothing/here"),
        (Action::Publish, "a/+"),
    ];
    let mut allowed = 0;
    let before = allocs();
    for _ in 0..100 {
        for w in &whos {
            for (action, s) in subjects {
                if rules.check(w, action, s) == Decision::Allow {
                    allowed += 1;
                }
            }
        }
    }
    let during = allocs() - before;
    assert_eq!(during, 0, "allocations during 2700 checks");
    assert!(allowed > 0);
}
