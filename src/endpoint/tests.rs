//! The endpoint driven without sockets.
