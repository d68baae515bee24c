//! Fuzz target: arbitrary bytes in (those that are UTF-8); `attnc_grammar::parse` must not
//! panic, and every error and item span must lie within the source on char boundaries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let (file, errors) = attnc_grammar::parse(source);
    for e in &errors {
        assert!(e.span.start <= e.span.end, "reversed span: {e:?}");
        assert!(e.span.end <= source.len(), "span past the end: {e:?}");
        assert!(source.is_char_boundary(e.span.start) && source.is_char_boundary(e.span.end));
        assert!(!e.message.is_empty());
    }
    for item in &file.items {
        let span = item.span();
        assert!(span.start <= span.end && span.end <= source.len(), "item span {span:?}");
    }
});
