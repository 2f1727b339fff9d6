//! Parts of the `poslake` binary that are more than argument handling.

pub mod stop;
