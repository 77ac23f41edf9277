//! The few Linux calls std does not offer: epoll, a nonblocking socket bound
//! to a source address before `connect`, CPU time, the fd limit and a
//! signalfd; and the write loop of a nonblocking socket's output buffer.
//! Every `unsafe` block is one FFI call on values this module owns.

use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Readable (`EPOLLIN`).
pub const READABLE: u32 = libc::EPOLLIN as u32;
/// Writable (`EPOLLOUT`).
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;
/// The peer hung up or the socket failed (`EPOLLHUP | EPOLLERR | EPOLLRDHUP`).
pub const HANGUP: u32 = (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32;
/// Edge-triggered registration (`EPOLLET`).
pub const EDGE: u32 = libc::EPOLLET as u32;

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

/// One readiness event: the registered token and the event bits.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// The token given at registration.
    pub token: u64,
    /// `READABLE`, `WRITABLE`, `HANGUP` bits.
    pub bits: u32,
}

impl Epoll {
    /// A new epoll instance returning at most `capacity` events per wait.
    pub fn new(capacity: usize) -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)];
        Ok(Self { fd, events })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, bits: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: bits,
            u64: token,
        };
        // SAFETY: `ev` lives across the call; the kernel copies it.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    /// Registers `fd` for `bits` under `token`.
    pub fn add(&self, fd: RawFd, bits: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, bits, token)
    }

    /// Removes `fd` (closing the fd also removes it).
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms` (-1: forever) and appends the events to `out`
    /// (cleared first). An interrupted wait returns no events.
    pub fn wait(&mut self, out: &mut Vec<Event>, timeout_ms: i32) -> io::Result<()> {
        out.clear();
        let cap = self.events.len() as libc::c_int;
        // SAFETY: `events` has `cap` initialised slots the kernel may overwrite.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                cap,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        out.extend(self.events[..n as usize].iter().map(|e| Event {
            // Copies out of the (packed on x86_64) struct.
            token: { e.u64 },
            bits: { e.events },
        }));
        Ok(())
    }
}

/// `Err(errno)` for a negative return code of a libc call, else the code.
fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A new nonblocking, close-on-exec TCP socket of `addr`'s family.
fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain syscall; the fd is owned right below.
    let fd = cvt(unsafe { libc::socket(family, flags, 0) })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Starts a nonblocking TCP connect to `dst`, first binding to `src` (port 0)
/// if given. `Ok` means connected or in progress: wait for writability, then
/// check [`TcpStream::take_error`].
pub fn connect_nonblocking(src: Option<SocketAddr>, dst: SocketAddr) -> io::Result<TcpStream> {
    let fd = tcp_socket(&dst)?;
    let raw = fd.as_raw_fd();
    let stream = TcpStream::from(fd);
    if let Some(src) = src {
        let (sa, len) = sockaddr(&src);
        // SAFETY: `sa` is a valid address of `len` bytes for this socket's family.
        cvt(unsafe { libc::bind(raw, (&sa as *const libc::sockaddr_storage).cast(), len) })?;
    }
    let (sa, len) = sockaddr(&dst);
    // SAFETY: as for bind.
    let rc = unsafe { libc::connect(raw, (&sa as *const libc::sockaddr_storage).cast(), len) };
    if let Err(err) = cvt(rc) {
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes `out[*pos..]` to `stream` until done or the socket is full. Once
/// all is written, `out` is cleared and `*pos` reset; a write of 0 bytes is
/// an error (`WriteZero`).
pub fn flush_out(stream: &TcpStream, out: &mut Vec<u8>, pos: &mut usize) -> io::Result<()> {
    while *pos < out.len() {
        match (&*stream).write(&out[*pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.clear();
    *pos = 0;
    Ok(())
}

/// User + system CPU seconds of this process so far.
pub fn cpu_seconds() -> f64 {
    let mut ru = MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a valid out-pointer for getrusage.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } == 0;
    if !ok {
        return 0.0;
    }
    // SAFETY: getrusage succeeded and filled the struct (it was zeroed anyway).
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Raises the soft fd limit towards `want` (at most the hard limit); returns
/// the soft limit in force afterwards.
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid in-pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// Blocks SIGTERM and SIGINT for this thread and returns a nonblocking
/// signalfd that becomes readable when one arrives (for an epoll loop).
pub fn termination_signalfd() -> io::Result<OwnedFd> {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: `set` is a valid sigset_t out-pointer, initialised by sigemptyset.
    let fd = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        // pthread_sigmask returns the error number; it does not set errno.
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        libc::signalfd(-1, set.as_ptr(), libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
    };
    let fd = cvt(fd)?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A nonblocking TCP listener on `addr` with `SO_REUSEADDR` and a listen
/// backlog of `backlog` (the kernel caps it at `net.core.somaxconn`). std's
/// `TcpListener::bind` uses 128, too few for bursts of hundreds of connects.
pub fn listen(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let fd = tcp_socket(&addr)?;
    let raw = fd.as_raw_fd();
    let listener = std::net::TcpListener::from(fd);
    let one: libc::c_int = 1;
    let (sa, len) = sockaddr(&addr);
    // SAFETY: valid pointers and lengths for the duration of each call.
    unsafe {
        cvt(libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        cvt(libc::bind(
            raw,
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        ))?;
        cvt(libc::listen(raw, backlog))?;
    }
    Ok(listener)
}
