//! Processes: the fork server (`server`), the loop a worker runs (`worker`), and how processes
//! leave and are reaped (`exit`).

pub(crate) mod exit;
pub(crate) mod server;
pub(crate) mod worker;
