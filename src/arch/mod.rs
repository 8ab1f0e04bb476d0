//! Machine descriptions per guest architecture.
pub mod x86_64;
