//! Both configuration formats: any text either parses into a configuration that validates
//! or not, with an error naming a line or key; never a panic. Parsing twice gives the same
//! result.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tidemq_core::Config;
use tidemq_core::config_parse::{Format, load};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if selector % 2 == 0 {
        Format::Hocon
    } else {
        Format::KeyValue
    };
    let env = BTreeMap::from([("FUZZ_PORT".to_owned(), "1884".to_owned())]);
    let first = load(&Config::default(), text, format, &env);
    let second = load(&Config::default(), text, format, &env);
    assert_eq!(first, second, "parsing is deterministic");
    match first {
        Ok((config, _warnings)) => {
            let _ = config.validate();
        }
        Err(issue) => {
            assert!(!issue.message.is_empty(), "errors say what is wrong");
        }
    }
});
