//! The `/ws` query and filter parser on arbitrary text: it never panics, and a filter it
//! accepts holds the documented limits (at most 100 values of at most 256 bytes, none empty).
#![no_main]
use dashstream_gateway::event::{MAX_FILTER_VALUES, MAX_FILTER_VALUE_BYTES};
use dashstream_gateway::ws::parse_params;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((_, _, filter, _)) = parse_params(s) {
        for set in [&filter.tenants, &filter.threads, &filter.types]
            .into_iter()
            .flatten()
        {
            assert!(set.len() <= MAX_FILTER_VALUES);
            assert!(set
                .iter()
                .all(|v| !v.is_empty() && v.len() <= MAX_FILTER_VALUE_BYTES));
        }
    }
});
