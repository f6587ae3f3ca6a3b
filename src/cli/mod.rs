//! The subcommands of the `qwen-scope` binary, one file each.

pub mod attributes;
pub mod bench;
pub mod forward;
pub mod inspect;
pub mod sweep;
