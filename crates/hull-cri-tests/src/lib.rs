//! Nothing here: the package is its tests (`tests/cri.rs`), kept apart from hull-shim
//! so that its gRPC client is built only for them.
