//! The receivers (OTLP/gRPC, OTLP/HTTP, Elasticsearch `_bulk`,
//! remote-write) driven through their routers without a socket, against a
//! real pipeline or metric store on a temporary directory, plus property
//! tests of the log query parser.

mod elastic;
mod grpc;
mod harness;
mod otlp_http;
mod query_properties;
mod remote_write;
