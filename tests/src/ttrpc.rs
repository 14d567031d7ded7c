//! A raw ttrpc client, written from the protocol (github.com/containerd/ttrpc
//! PROTOCOL.md), that speaks to a shim's task socket as containerd does: for what
//! ctr cannot do, and for bad input. Protobuf is encoded by hand, field by field.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The task service's name.
pub const TASK: &str = "containerd.task.v2.Task";

/// Protobuf field `n` as a length-delimited value.
pub fn pb_bytes(n: u32, v: &[u8]) -> Vec<u8> {
    let mut out = pb_varint((n << 3 | 2) as u64);
    out.extend(pb_varint(v.len() as u64));
    out.extend_from_slice(v);
    out
}

/// Protobuf field `n` as a varint.
pub fn pb_uint(n: u32, v: u64) -> Vec<u8> {
    let mut out = pb_varint((n << 3) as u64);
    out.extend(pb_varint(v));
    out
}

fn pb_varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// The fields of a protobuf message: (field number, varint value or bytes).
pub fn pb_fields(mut b: &[u8]) -> Vec<(u32, Result<u64, Vec<u8>>)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some((&x, rest)) = b.split_first() else {
                return v;
            };
            *b = rest;
            v |= ((x & 0x7f) as u64) << shift;
            if x & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut fields = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        let (n, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => fields.push((n, Ok(varint(&mut b)))),
            2 => {
                let len = (varint(&mut b) as usize).min(b.len());
                fields.push((n, Err(b[..len].to_vec())));
                b = &b[len..];
            }
            _ => panic!("unexpected wire type {wire}"),
        }
    }
    fields
}

/// A ttrpc Request message.
pub fn ttrpc_request(service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = pb_bytes(1, service.as_bytes());
    m.extend(pb_bytes(2, method.as_bytes()));
    m.extend(pb_bytes(3, payload));
    m
}

/// One ttrpc connection, used strictly one call at a time.
pub struct TtrpcClient {
    stream: UnixStream,
    next: u32,
}

/// A ttrpc answer: the status code (0 = OK) and message, and the payload.
#[derive(Debug)]
pub struct TtrpcAnswer {
    pub stream: u32,
    pub code: u64,
    pub message: String,
    pub payload: Vec<u8>,
}

impl TtrpcClient {
    /// Connects to `unix:///path` or a plain path.
    pub fn connect(address: &str) -> TtrpcClient {
        let path = address.trim().trim_start_matches("unix://");
        let stream = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {path}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        TtrpcClient { stream, next: 1 }
    }

    /// Sends a frame of `kind` with `data` (or just a header claiming `len`).
    pub fn send_frame(&mut self, len: u32, kind: u8, data: &[u8]) -> u32 {
        let stream = self.next;
        self.next += 2;
        let mut f = len.to_be_bytes().to_vec();
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(&[kind, 0]);
        self.stream.write_all(&f).expect("write header");
        self.stream.write_all(data).expect("write data");
        stream
    }

    pub fn read_answer(&mut self) -> TtrpcAnswer {
        let mut h = [0u8; 10];
        self.stream.read_exact(&mut h).expect("read answer header");
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        assert_eq!(h[8], 2, "not a response frame");
        let mut data = vec![0u8; len];
        self.stream.read_exact(&mut data).expect("read answer");
        let mut a = TtrpcAnswer {
            stream,
            code: 0,
            message: String::new(),
            payload: Vec::new(),
        };
        for (n, v) in pb_fields(&data) {
            match (n, v) {
                (1, Err(status)) => {
                    for (sn, sv) in pb_fields(&status) {
                        match (sn, sv) {
                            (1, Ok(c)) => a.code = c,
                            (2, Err(m)) => a.message = String::from_utf8_lossy(&m).into_owned(),
                            _ => {}
                        }
                    }
                }
                (2, Err(p)) => a.payload = p,
                _ => {}
            }
        }
        a
    }

    /// One call of the task service (containerd.task.v2.Task).
    pub fn call(&mut self, method: &str, payload: &[u8]) -> TtrpcAnswer {
        let req = ttrpc_request(TASK, method, payload);
        let stream = self.send_frame(req.len() as u32, 1, &req);
        let a = self.read_answer();
        assert_eq!(a.stream, stream);
        a
    }
}
