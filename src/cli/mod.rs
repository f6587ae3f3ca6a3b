//! The subcommands of the `qwen-scope` binary, one file each.

pub mod bench;
pub mod forward;
pub mod sweep;
