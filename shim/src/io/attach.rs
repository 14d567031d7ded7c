//! Attach: any number of clients on a process's output, one of them on its stdin,
//! over a SOCK_SEQPACKET socket with conmon's wire (what Podman and CRI-O already
//! read): each output packet is one byte naming the stream (2 stdout, 3 stderr) and
//! at most 8192 bytes of it; an input packet is raw bytes for stdin.
//!
//! A client that reads, however slowly, gets every byte: while one has more than
//! [`QUEUE_BOUND`] queued, the process's output is not read (it waits, as it would
//! behind conmon or containerd), so memory stays bounded. A client that reads nothing
//! for [`STALL`] while it holds output back is cut off: it gets no more output, only
//! a last packet with the reason (stream byte 4; podman 4.3.1's attach takes it
//! for an error and ends), sent when its socket takes it, then EOF; the process, its
//! log and the other clients carry on. When the process's output ends, each client gets what is
//! queued for it (the exit waits for that, up to a stall), then EOF.

use super::Stream;
use crate::registry::{Io, Owner};
use mio::{Interest, Token};
use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Payload bytes per packet (conmon's STDIO_BUF_SIZE).
pub const PACKET_PAYLOAD: usize = 8192;
/// Bytes queued for one client (beyond what its socket buffer holds) past which the
/// process's output waits for it.
pub const QUEUE_BOUND: usize = 1 << 20;
/// A client holding output back that reads nothing for this long is cut off.
pub const STALL: Duration = Duration::from_secs(5);
/// Stream byte of the shim's last word to a client it disconnects.
pub const CONTROL: u8 = 4;
/// conmon's CONN_SOCK_BUF_SIZE: the largest input packet read at once.
const INPUT_PACKET: usize = 32 << 10;

struct Client {
    fd: OwnedFd,
    token: Token,
    out: VecDeque<Vec<u8>>,
    queued: usize,
    /// Input read but not yet taken by the process's stdin.
    pending_input: Vec<u8>,
    /// No more output for it: it goes once what is queued (its reason) is sent.
    cut: bool,
    /// When its socket last took a packet (or it connected).
    progress_at: Instant,
    /// It shut down its sending side (podman does, its stdin done or never read):
    /// no more input, but it still gets the output until it closes.
    input_done: bool,
}

pub struct AttachHub {
    path: PathBuf,
    listener: OwnedFd,
    listener_token: Token,
    clients: Vec<Client>,
    /// The process's stdin, for input (a dup of its pipe's write end, or the PTY
    /// master); None once closed or if the process has none.
    stdin: Option<(OwnedFd, Option<Token>)>,
    /// The client whose input goes to stdin: the first to send any.
    stdin_owner: Option<Token>,
    /// The output is over: no new clients; each goes once its queue is sent.
    closing: bool,
    /// `close_stdin` came: input already read still goes to stdin, then it closes;
    /// new input is refused.
    stdin_closing: bool,
    /// conmon's rule (tether-conmon): a client that stops writing closes stdin.
    eof_closes_stdin: bool,
    /// A client stopped writing under that rule: stdin is to be closed.
    stdin_eof: bool,
    /// stdin is still to come (a terminal's, until its master arrives): input waits
    /// for it rather than finding it closed.
    stdin_expected: bool,
}

impl AttachHub {
    pub fn bind(path: &Path, io: &mut Io<'_>) -> Result<AttachHub, String> {
        let what = |e: Errno| format!("cannot make attach socket {}: {e}", path.display());
        let _ = std::fs::remove_file(path);
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(what)?;
        let addr = UnixAddr::new(path).map_err(what)?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(what)?;
        let backlog = Backlog::new(16).map_err(what)?;
        socket::listen(&fd, backlog).map_err(what)?;
        let listener_token = io
            .watch_fd(Owner::Core, fd.as_raw_fd(), Interest::READABLE)
            .map_err(|e| format!("cannot watch attach socket {}: {e}", path.display()))?;
        Ok(AttachHub {
            path: path.to_path_buf(),
            listener: fd,
            listener_token,
            clients: Vec::new(),
            stdin: None,
            stdin_owner: None,
            closing: false,
            stdin_closing: false,
            eof_closes_stdin: false,
            stdin_eof: false,
            stdin_expected: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn has_clients(&self) -> bool {
        !self.clients.is_empty()
    }

    /// Where attach input goes (the process's stdin).
    pub fn set_stdin(&mut self, fd: Option<OwnedFd>) {
        self.stdin = fd.map(|fd| (fd, None));
        self.stdin_expected = false;
    }

    /// The process's stdin comes later ([`set_stdin`](Self::set_stdin)): input sent
    /// meanwhile waits (one packet per client), then goes in with
    /// [`retry_input`](Self::retry_input).
    pub fn expect_stdin(&mut self) {
        self.stdin_expected = true;
    }

    /// stdin has come: input that waited for it goes in.
    pub fn retry_input(&mut self, io: &mut Io<'_>) {
        let tokens: Vec<Token> = self.clients.iter().map(|c| c.token).collect();
        for t in tokens {
            self.serve(t, io);
        }
    }

    /// conmon's rule: when a client stops writing (EOF on its socket, after all its
    /// input went in), the process's stdin is closed.
    pub fn set_eof_closes_stdin(&mut self, on: bool) {
        self.eof_closes_stdin = on;
    }

    /// True once, when a client's EOF asks for stdin to be closed.
    pub fn take_stdin_eof(&mut self) -> bool {
        std::mem::take(&mut self.stdin_eof)
    }

    /// `close_stdin`: input the hub has already read from clients still reaches the
    /// process; then the hub's descriptor on stdin goes, and new input is refused.
    pub fn close_stdin(&mut self, io: &mut Io<'_>) {
        self.stdin_expected = false;
        self.stdin_closing = true;
        if self.clients.iter().all(|c| c.pending_input.is_empty()) {
            self.drop_stdin(io);
        }
    }

    fn drop_stdin(&mut self, io: &mut Io<'_>) {
        if let Some((fd, Some(token))) = self.stdin.take() {
            io.unwatch_fd(fd.as_raw_fd(), token);
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        self.listener_token == token
            || self.clients.iter().any(|c| c.token == token)
            || self.stdin.as_ref().is_some_and(|(_, t)| *t == Some(token))
    }

    /// Readiness of one of the hub's tokens.
    pub fn on_ready(&mut self, token: Token, io: &mut Io<'_>) {
        if token == self.listener_token {
            return self.accept(io);
        }
        if self.stdin.as_ref().is_some_and(|(_, t)| *t == Some(token)) {
            // stdin can take more: every client's pending input gets another try.
            let tokens: Vec<Token> = self.clients.iter().map(|c| c.token).collect();
            for t in tokens {
                self.serve(t, io);
            }
            return;
        }
        self.serve(token, io);
    }

    fn accept(&mut self, io: &mut Io<'_>) {
        loop {
            match crate::sys::accept_owned(self.listener.as_raw_fd()) {
                Ok(fd) => {
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    match io.watch_fd(Owner::Core, fd.as_raw_fd(), interest) {
                        Ok(token) => self.clients.push(Client {
                            fd,
                            token,
                            out: VecDeque::new(),
                            queued: 0,
                            pending_input: Vec::new(),
                            cut: false,
                            progress_at: Instant::now(),
                            input_done: false,
                        }),
                        Err(e) => crate::log!("cannot watch an attach client: {e}"),
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(e) => return crate::log!("attach accept failed: {e}"),
            }
        }
    }

    /// A client's input and output, as far as each can go now.
    fn serve(&mut self, token: Token, io: &mut Io<'_>) {
        let Some(i) = self.clients.iter().position(|c| c.token == token) else {
            return;
        };
        let client = &self.clients[i];
        if client.input_done && peer_closed(&client.fd) {
            return self.remove(i, io);
        }
        if !client.cut && !client.input_done {
            let taken = self.take_input(i, io);
            if self.stdin_closing && self.clients.iter().all(|c| c.pending_input.is_empty()) {
                self.drop_stdin(io);
            }
            if let Err(reason) = taken {
                return self.cut_off(i, io, reason);
            }
        }
        self.flush_or_drop(i, io);
    }

    /// Sends what the client's socket takes; a client that is gone, or cut off (or
    /// closing) with nothing left to send, goes.
    fn flush_or_drop(&mut self, i: usize, io: &mut Io<'_>) -> bool {
        let client = &mut self.clients[i];
        let gone = flush(client).is_err();
        if gone || ((client.cut || self.closing) && client.out.is_empty()) {
            self.remove(i, io);
            return false;
        }
        true
    }

    /// Moves a client's input to stdin; Err(reason) to disconnect it.
    fn take_input(&mut self, i: usize, io: &mut Io<'_>) -> Result<(), Option<String>> {
        loop {
            let client = &mut self.clients[i];
            if !client.pending_input.is_empty() {
                let Some((stdin, stdin_token)) = self.stdin.as_mut() else {
                    if self.stdin_expected {
                        return Ok(());
                    }
                    return Err(Some("the process's stdin is closed".to_string()));
                };
                match nix::unistd::write(&*stdin, &client.pending_input) {
                    Ok(n) => {
                        client.pending_input.drain(..n);
                        continue;
                    }
                    Err(Errno::EAGAIN) => {
                        // The process is not reading: wait until its stdin can take more.
                        if stdin_token.is_none() {
                            *stdin_token = io
                                .watch_fd(Owner::Core, stdin.as_raw_fd(), Interest::WRITABLE)
                                .ok();
                        }
                        return Ok(());
                    }
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(Some(format!("the process's stdin: {e}"))),
                }
            }
            let mut buf = vec![0u8; INPUT_PACKET];
            match socket::recv(client.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {
                    if self.eof_closes_stdin && self.stdin.is_some() {
                        self.stdin_eof = true;
                    }
                    if peer_closed(&client.fd) {
                        return Err(None);
                    }
                    // Only its sending side is shut: it keeps getting output.
                    client.input_done = true;
                    if self.stdin_owner == Some(client.token) {
                        self.stdin_owner = None;
                    }
                    return Ok(());
                }
                Ok(_) if self.stdin_closing => return Err(Some("the process's stdin is closed".to_string())),
                Ok(n) => {
                    if *self.stdin_owner.get_or_insert(client.token) != client.token {
                        return Err(Some("stdin is held by another attach client".to_string()));
                    }
                    buf.truncate(n);
                    client.pending_input = buf;
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(_) => return Err(None),
            }
        }
    }

    /// A client has more than [`QUEUE_BOUND`] queued: the output must wait.
    pub fn holding_back(&self) -> bool {
        self.clients.iter().any(|c| !c.cut && c.queued > QUEUE_BOUND)
    }

    /// Output is queued for a client that is still served.
    pub fn output_queued(&self) -> bool {
        self.clients.iter().any(|c| !c.cut && c.queued > 0)
    }

    /// When a client holding something back (over its bound, or, once the output
    /// has ended, anything) counts as stalled if it reads nothing until then.
    pub fn stall_deadline(&self, output_ended: bool) -> Option<Instant> {
        self.clients
            .iter()
            .filter(|c| !c.cut && (c.queued > QUEUE_BOUND || (output_ended && c.queued > 0)))
            .map(|c| c.progress_at + STALL)
            .min()
    }

    /// Cuts off the clients stalled by `now`; true if any was.
    pub fn cut_stalled(&mut self, now: Instant, output_ended: bool, io: &mut Io<'_>) -> bool {
        let mut cut = false;
        while let Some(i) = self.clients.iter().position(|c| {
            !c.cut
                && (c.queued > QUEUE_BOUND || (output_ended && c.queued > 0))
                && now >= c.progress_at + STALL
        }) {
            let reason = format!(
                "attach client too slow: it read nothing for {STALL:?} with {} bytes of output queued",
                self.clients[i].queued
            );
            self.cut_off(i, io, Some(reason));
            cut = true;
        }
        cut
    }

    /// Output of `stream` to every client, in packets (see [`QUEUE_BOUND`]).
    pub fn broadcast(&mut self, stream: Stream, chunk: &[u8], io: &mut Io<'_>) {
        let id = match stream {
            Stream::Stdin => 1,
            Stream::Stdout => 2,
            Stream::Stderr => 3,
        };
        let mut i = 0;
        while i < self.clients.len() {
            let client = &mut self.clients[i];
            if client.cut {
                i += 1;
                continue;
            }
            for part in chunk.chunks(PACKET_PAYLOAD) {
                let mut packet = Vec::with_capacity(part.len() + 1);
                packet.push(id);
                packet.extend_from_slice(part);
                client.queued += packet.len();
                client.out.push_back(packet);
            }
            if self.flush_or_drop(i, io) {
                i += 1;
            }
        }
    }

    /// No more output for client `i`: its queue goes; the reason (if any) is its last
    /// packet, sent when its socket takes it. A client that sent EOF goes at once.
    fn cut_off(&mut self, i: usize, io: &mut Io<'_>, reason: Option<String>) {
        let client = &mut self.clients[i];
        client.cut = true;
        client.out.clear();
        client.queued = 0;
        client.pending_input.clear();
        if self.stdin_owner == Some(client.token) {
            self.stdin_owner = None;
        }
        match reason {
            Some(reason) => {
                crate::log!("attach {}: cutting a client off: {reason}", self.path.display());
                let mut packet = vec![CONTROL];
                packet.extend_from_slice(reason.as_bytes());
                client.queued = packet.len();
                client.out.push_back(packet);
                self.flush_or_drop(i, io);
            }
            None => self.remove(i, io),
        }
    }

    fn remove(&mut self, i: usize, io: &mut Io<'_>) {
        let client = self.clients.remove(i);
        if self.stdin_owner == Some(client.token) {
            self.stdin_owner = None;
        }
        io.unwatch_fd(client.fd.as_raw_fd(), client.token);
    }

    /// The process's output is over: no new clients; each client gets what is queued
    /// for it, then EOF.
    pub fn finish(&mut self, io: &mut Io<'_>) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.drop_stdin(io);
        io.unwatch_fd(self.listener.as_raw_fd(), self.listener_token);
        let _ = std::fs::remove_file(&self.path);
        let mut i = 0;
        while i < self.clients.len() {
            if self.flush_or_drop(i, io) {
                i += 1;
            }
        }
    }

    /// Everything goes now (the process is deleted, or the shim exits).
    pub fn close(mut self, io: &mut Io<'_>) {
        self.finish(io);
        while !self.clients.is_empty() {
            self.remove(0, io);
        }
    }
}

/// The client closed its socket (both directions), as opposed to shutting down only
/// its sending side.
fn peer_closed(fd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => true,
    }
}

/// Sends what the client's socket takes; Err when it is gone.
fn flush(client: &mut Client) -> Result<(), Option<String>> {
    while let Some(packet) = client.out.front() {
        match socket::send(
            client.fd.as_raw_fd(),
            packet,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(_) => {
                client.queued -= packet.len();
                client.out.pop_front();
                client.progress_at = Instant::now();
            }
            Err(Errno::EAGAIN) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(_) => return Err(None),
        }
    }
    client.out = VecDeque::new();
    Ok(())
}

/// An [`AttachHub`] in a hand-over record: its sockets by fd, each client's queue.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct AttachRecord {
    path: PathBuf,
    listener: std::os::fd::RawFd,
    clients: Vec<ClientRecord>,
    stdin: Option<std::os::fd::RawFd>,
    /// stdin was watched for room (input waited for the process).
    stdin_watched: bool,
    /// Index into `clients`.
    stdin_owner: Option<usize>,
    closing: bool,
    stdin_closing: bool,
    eof_closes_stdin: bool,
    stdin_eof: bool,
    stdin_expected: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ClientRecord {
    fd: std::os::fd::RawFd,
    #[serde(with = "crate::handover::hex_list")]
    out: Vec<Vec<u8>>,
    #[serde(with = "crate::handover::hex")]
    pending_input: Vec<u8>,
    cut: bool,
    progress_ms_ago: Option<u64>,
    input_done: bool,
}

impl AttachHub {
    pub fn hand_over(&self, fds: &mut crate::handover::Passing) -> Result<AttachRecord, String> {
        let mut clients = Vec::with_capacity(self.clients.len());
        for c in &self.clients {
            clients.push(ClientRecord {
                fd: fds.pass(&c.fd)?,
                out: c.out.iter().cloned().collect(),
                pending_input: c.pending_input.clone(),
                cut: c.cut,
                progress_ms_ago: crate::handover::ms_since(Some(c.progress_at)),
                input_done: c.input_done,
            });
        }
        Ok(AttachRecord {
            path: self.path.clone(),
            listener: fds.pass(&self.listener)?,
            clients,
            stdin: fds.pass_opt(self.stdin.as_ref().map(|(fd, _)| fd))?,
            stdin_watched: self.stdin.as_ref().is_some_and(|(_, t)| t.is_some()),
            stdin_owner: self
                .stdin_owner
                .and_then(|t| self.clients.iter().position(|c| c.token == t)),
            closing: self.closing,
            stdin_closing: self.stdin_closing,
            eof_closes_stdin: self.eof_closes_stdin,
            stdin_eof: self.stdin_eof,
            stdin_expected: self.stdin_expected,
        })
    }

    /// The hub again, its sockets watched by the new loop.
    pub fn take_over(
        r: AttachRecord,
        fds: &mut crate::handover::Adopting,
        io: &mut Io<'_>,
    ) -> Result<AttachHub, String> {
        let watch = |io: &mut Io<'_>, fd: &OwnedFd, interest| {
            io.watch_fd(Owner::Core, fd.as_raw_fd(), interest)
                .map_err(|e| format!("cannot watch attach socket {}: {e}", r.path.display()))
        };
        let listener = fds.take(r.listener)?;
        // A closing hub no longer watches its listener (see `finish`).
        let listener_token = if r.closing {
            Token(usize::MAX)
        } else {
            watch(io, &listener, Interest::READABLE)?
        };
        let mut clients = Vec::with_capacity(r.clients.len());
        for c in r.clients {
            let fd = fds.take(c.fd)?;
            let token = watch(io, &fd, Interest::READABLE | Interest::WRITABLE)?;
            let out: VecDeque<Vec<u8>> = c.out.into();
            clients.push(Client {
                fd,
                token,
                queued: out.iter().map(Vec::len).sum(),
                out,
                pending_input: c.pending_input,
                cut: c.cut,
                progress_at: crate::handover::from_ms_since(c.progress_ms_ago).unwrap_or_else(Instant::now),
                input_done: c.input_done,
            });
        }
        let stdin = match fds.take_opt(r.stdin)? {
            Some(fd) if r.stdin_watched => {
                let token = watch(io, &fd, Interest::WRITABLE)?;
                Some((fd, Some(token)))
            }
            Some(fd) => Some((fd, None)),
            None => None,
        };
        Ok(AttachHub {
            stdin_owner: r.stdin_owner.and_then(|i| clients.get(i)).map(|c| c.token),
            path: r.path,
            listener,
            listener_token,
            clients,
            stdin,
            closing: r.closing,
            stdin_closing: r.stdin_closing,
            eof_closes_stdin: r.eof_closes_stdin,
            stdin_eof: r.stdin_eof,
            stdin_expected: r.stdin_expected,
        })
    }
}
