//! The configuration layer: upstream documents in, module values and rejections out.
//!
//! Pure and total: no IO, no async, no clock. One broken document rejects its own
//! module and nothing else.

mod parse;

pub use parse::{Format, ParseError, document_key, line_of_offset, parse_document};
