//! `ringlb demo-backend`: a tiny HTTP/1.1 keep-alive server that answers every request with its name.
