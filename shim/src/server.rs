//! The event loop: one thread, one mio poll. Sources: the listening socket, client
//! connections, signals (SIGCHLD drives the reaper) and the core's stdio and console
//! fds. Nothing in it blocks.

use crate::conn::Conn;
use crate::container::{Container, FIRST_CORE_TOKEN};
use crate::reaper;
use crate::state_dir::StateDir;
use mio::net::UnixListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::io;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_CONN: usize = 2;
/// How long a shim that is exiting keeps trying to hand its last answers over.
const EXIT_FLUSH: Duration = Duration::from_secs(2);

pub struct Server {
    poll: Poll,
    listener: UnixListener,
    signals: Signals,
    front: crate::rpc::Front,
    core: Container,
    dir: StateDir,
    next_conn: usize,
}

impl Server {
    pub fn new(
        listener: std::os::unix::net::UnixListener,
        core: Container,
        dir: StateDir,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        listener.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGCHLD, SIGTERM])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        Ok(Server {
            poll,
            listener,
            signals,
            front: Default::default(),
            core,
            dir,
            next_conn: FIRST_CONN,
        })
    }

    /// Serves until the container is deleted or `shutdown` is called.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut exiting: Option<(Instant, bool)> = None;
        // A child may have ended before the signal handler was installed.
        let early = reaper::reap_all();
        if !early.is_empty() {
            self.core.on_child_exits(early, self.poll.registry());
        }
        loop {
            let deadline = match exiting {
                Some((at, _)) => Some(at),
                None => self.core.next_deadline(),
            };
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let mut reap = false;
            // Requests and runtime calls allocate; relaying output does not.
            let mut allocated = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER if exiting.is_none() => self.accept(),
                    LISTENER => {}
                    SIGNALS => {
                        for signal in self.signals.pending() {
                            match signal {
                                SIGCHLD => reap = true,
                                _ => crate::log!(
                                    "SIGTERM received and ignored: the container keeps running; use `shutdown` or `delete`"
                                ),
                            }
                        }
                    }
                    t if t.0 >= FIRST_CORE_TOKEN => self.core.on_ready(t, self.poll.registry()),
                    t => {
                        allocated = true;
                        let gone = event.is_write_closed() && event.is_read_closed();
                        self.front.on_ready(t, gone, &mut self.core, self.poll.registry())
                    }
                }
            }
            let registry = self.poll.registry();
            if reap {
                self.core.on_child_exits(reaper::reap_all(), registry);
                allocated = true;
            }
            self.core.on_tick(registry);
            if let Some(remove) = self.front.route(self.core.take_outputs(), registry) {
                exiting.get_or_insert((Instant::now() + EXIT_FLUSH, remove));
            }
            if allocated && self.front.all_flushed() {
                crate::memory::give_back();
            }
            if let Some((at, remove)) = exiting {
                if self.front.all_flushed() || Instant::now() >= at {
                    if remove {
                        if let Err(e) = std::fs::remove_dir_all(&self.dir.root) {
                            crate::log!("cannot remove {}: {e}", self.dir.root.display());
                        }
                    } else {
                        let _ = std::fs::remove_file(self.dir.socket());
                        crate::log!("shim exiting; state dir kept");
                    }
                    return Ok(());
                }
            }
        }
    }

    #[inline(never)] // keeps its locals out of the idle loop's frame
    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if let Err(why) = peer_allowed(&stream) {
                        crate::log!("refused a client: {why}");
                        continue;
                    }
                    let token = self.next_conn_token();
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = self.poll.registry().register(&mut stream, token, interest) {
                        crate::log!("cannot watch a client: {e}");
                        continue;
                    }
                    self.front.add(token, Conn::new(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and wait for the next readiness.
                    crate::log!("accept failed: {e}");
                    return;
                }
            }
        }
    }
}

impl Server {
    /// The next free connection token (they wrap after 16M connections; one still in
    /// use is skipped).
    fn next_conn_token(&mut self) -> Token {
        loop {
            let token = Token(self.next_conn);
            self.next_conn += 1;
            if self.next_conn >= FIRST_CORE_TOKEN {
                self.next_conn = FIRST_CONN;
            }
            if !self.front.conns.contains_key(&token) {
                return token;
            }
        }
    }
}

/// Only the shim's own user (or root) may drive it.
fn peer_allowed(stream: &mio::net::UnixStream) -> Result<(), String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    use std::os::fd::AsFd;
    let creds = getsockopt(&stream.as_fd(), PeerCredentials).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if creds.uid() == me || creds.uid() == 0 {
        Ok(())
    } else {
        Err(format!("peer uid {} is neither {me} nor root", creds.uid()))
    }
}
