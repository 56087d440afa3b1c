//! The `shmpool` command-line tool.

fn main() {}
