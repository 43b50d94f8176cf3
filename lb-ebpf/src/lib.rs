#![no_std]
// This file exists to enable the library target, so that lb-daemon can name this crate as a
// build dependency and cargo rebuilds the object when the programs change.
