//! Wake benchmark (see BENCHMARKS.md).
fn main() {}
