//! Unit tests of the forward-auth contracts.
