//! A hand-written readiness loop over mio: what tokio does underneath, without a runtime.

use std::io;
use std::net::{SocketAddr, TcpListener};

use mio::net::{TcpListener as MioListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::{connect_upstream, read_available, response_len, take_request, write_available};

const LISTENER: Token = Token(usize::MAX);

struct Pair {
    client: TcpStream,
    up: TcpStream,
    /// Bytes from the client not yet taken as a request, and from the server.
    cin: Vec<u8>,
    uin: Vec<u8>,
    to_up: Vec<u8>,
    to_client: Vec<u8>,
    /// A request went up; its answer has not come back yet.
    waiting: bool,
}

impl Pair {
    /// Moves every complete message on: `Err` closes the pair.
    fn drive(&mut self) -> io::Result<()> {
        loop {
            if !self.waiting {
                if let Some(n) = take_request(&self.cin, &mut self.to_up) {
                    self.cin.drain(..n);
                    self.waiting = true;
                }
            }
            if !self.to_up.is_empty() {
                write_available(&mut self.up, &mut self.to_up)?;
            }
            let mut answered = false;
            if self.waiting {
                if let Some(n) = response_len(&self.uin) {
                    self.to_client.extend(self.uin.drain(..n));
                    self.waiting = false;
                    answered = true;
                }
            }
            if !self.to_client.is_empty() {
                write_available(&mut self.client, &mut self.to_client)?;
            }
            if !answered {
                return Ok(());
            }
        }
    }
}

pub fn run(listener: TcpListener, backends: &[SocketAddr]) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = MioListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut scratch = vec![0u8; 16 * 1024];
    let mut accepted = 0usize;
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in &events {
            if ev.token() == LISTENER {
                loop {
                    let (mut client, _) = match listener.accept() {
                        Ok(c) => c,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("io-floor: accept: {e}");
                            break;
                        }
                    };
                    let up = match connect_upstream(backends, accepted) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("io-floor: connect: {e}");
                            continue;
                        }
                    };
                    accepted += 1;
                    up.set_nonblocking(true)?;
                    let mut up = TcpStream::from_std(up);
                    client.set_nodelay(true)?;
                    let i = free.pop().unwrap_or_else(|| {
                        pairs.push(None);
                        pairs.len() - 1
                    });
                    let both = Interest::READABLE | Interest::WRITABLE;
                    poll.registry().register(&mut client, Token(2 * i), both)?;
                    poll.registry().register(&mut up, Token(2 * i + 1), both)?;
                    pairs[i] = Some(Pair {
                        client,
                        up,
                        cin: Vec::with_capacity(4096),
                        uin: Vec::with_capacity(4096),
                        to_up: Vec::with_capacity(4096),
                        to_client: Vec::with_capacity(4096),
                        waiting: false,
                    });
                }
                continue;
            }
            let i = ev.token().0 / 2;
            let Some(p) = pairs.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            let r = if ev.is_readable() {
                if ev.token().0 % 2 == 0 {
                    read_available(&mut p.client, &mut p.cin, &mut scratch)
                } else {
                    read_available(&mut p.up, &mut p.uin, &mut scratch)
                }
            } else {
                Ok(true)
            };
            if !matches!(r, Ok(true)) || p.drive().is_err() {
                if let Some(mut p) = pairs[i].take() {
                    let _ = poll.registry().deregister(&mut p.client);
                    let _ = poll.registry().deregister(&mut p.up);
                }
                free.push(i);
            }
        }
    }
}
