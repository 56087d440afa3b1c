//! One module per subcommand; each only glues library calls and the sweep/report modules.

pub(crate) mod bench;
pub(crate) mod hash;
