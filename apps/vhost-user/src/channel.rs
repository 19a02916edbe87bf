//! Message framing on the vhost-user unix socket: a header, a payload, and
//! file descriptors (SCM_RIGHTS) riding with the header's bytes.
//!
//! Receiving never blocks: [`Channel::try_recv`] takes what the socket holds
//! now and keeps a partly received message for the next call, so the
//! engine's breathe loop can serve the socket without stalling on a slow or
//! hostile peer. Reads stop at the message's boundaries (header, then
//! exactly `size` payload bytes), so the descriptors of the next message are
//! never taken with this one. Sending waits a bounded time for room.
//!
//! [`listen`] makes the listening end of a socket path for whichever side
//! is the server (a stale file left by a dead process is removed; a live
//! listener on the path is an error), non-blocking, removed when dropped.
//! Within this process a path has one listening socket, shared by the
//! [`Listener`]s of the app that made it: an app made anew (restarted, or
//! moved to another worker) listens while the instance it replaces still
//! runs, and a guest that reconnects finds the socket it knew; another app
//! of this process on the path is refused, as another process is.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::protocol::{FLAG_REPLY, HEADER_SIZE, Header, MAX_FDS, Message, ProtocolError, VERSION};

/// How long a send may wait for the peer to make room in the socket, by
/// default (the frontend's side; the app waits not at all).
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// One end of a vhost-user connection.
pub struct Channel {
    sock: UnixStream,
    header: [u8; HEADER_SIZE],
    header_got: usize,
    payload: Vec<u8>,
    payload_got: usize,
    /// Known once the header is in.
    size: Option<usize>,
    fds: Vec<OwnedFd>,
    send_timeout: Duration,
}

fn cmsg_space(bytes: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe { libc::CMSG_SPACE(bytes as u32) as usize }
}

impl Channel {
    /// Wrap a connected socket (made non-blocking here).
    pub fn new(sock: UnixStream) -> io::Result<Channel> {
        sock.set_nonblocking(true)?;
        Ok(Channel {
            sock,
            header: [0; HEADER_SIZE],
            header_got: 0,
            payload: Vec::new(),
            payload_got: 0,
            size: None,
            fds: Vec::new(),
            send_timeout: SEND_TIMEOUT,
        })
    }

    /// How long `send` waits for room. Zero: a peer that does not read
    /// what we send (its socket buffer full) is an error at once, so a
    /// frontend cannot stall the engine by not reading its replies.
    pub fn set_send_timeout(&mut self, d: Duration) {
        self.send_timeout = d;
    }

    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// True when bytes (or the peer's hangup) wait on the socket: one poll
    /// with a zero timeout.
    pub fn readable(&self) -> bool {
        poll_fd(self.sock.as_raw_fd(), libc::POLLIN, 0)
    }

    /// A whole message if one has arrived; Ok(None) if not yet. EOF is
    /// `Closed`; a header that breaks the rules is an error (the caller drops
    /// the connection).
    pub fn try_recv(&mut self) -> Result<Option<Message>, ProtocolError> {
        loop {
            let size = match self.size {
                Some(s) => s,
                None => {
                    let got = self.header_got;
                    let mut buf = [0u8; HEADER_SIZE];
                    let n = match self.recv_some(&mut buf[..HEADER_SIZE - got])? {
                        Some(n) => n,
                        None => return Ok(None),
                    };
                    self.header[got..got + n].copy_from_slice(&buf[..n]);
                    self.header_got += n;
                    if self.header_got < HEADER_SIZE {
                        continue;
                    }
                    let h = Header::from_bytes(&self.header);
                    h.check()?;
                    self.size = Some(h.size as usize);
                    self.payload = vec![0; h.size as usize];
                    self.payload_got = 0;
                    h.size as usize
                }
            };
            if self.payload_got < size {
                let mut payload = std::mem::take(&mut self.payload);
                let r = self.recv_some(&mut payload[self.payload_got..]);
                self.payload = payload;
                match r? {
                    Some(n) => self.payload_got += n,
                    None => return Ok(None),
                }
                continue;
            }
            let header = Header::from_bytes(&self.header);
            let msg =
                Message { header, payload: std::mem::take(&mut self.payload), fds: std::mem::take(&mut self.fds) };
            self.header_got = 0;
            self.size = None;
            self.payload_got = 0;
            return Ok(Some(msg));
        }
    }

    /// Wait up to `timeout` for a whole message (the frontend's side, and
    /// tests).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Message, ProtocolError> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(m) = self.try_recv()? {
                return Ok(m);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProtocolError::Timeout);
            }
            poll_fd(self.sock.as_raw_fd(), libc::POLLIN, left.as_millis().clamp(1, 1000) as i32);
        }
    }

    /// One recvmsg into `buf` (never empty). Ok(None) when nothing waits.
    fn recv_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ProtocolError> {
        let mut cbuf = [0u64; 64]; // 512 bytes, 8-aligned: room for MAX_FDS + a few descriptors
        let space = cmsg_space(std::mem::size_of::<RawFd>() * (MAX_FDS + 4)).min(std::mem::size_of_val(&cbuf));
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.as_mut_ptr().cast();
        mh.msg_controllen = space as _;
        // SAFETY: recvmsg writes at most iov_len bytes into buf and msg_controllen into cbuf.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut mh, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e.into()),
            };
        }
        // Take ownership of every descriptor first, so that each is closed
        // whatever happens next.
        let mut too_many = mh.msg_flags & libc::MSG_CTRUNC != 0;
        // SAFETY: walking the control buffer the kernel filled, with the libc macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&mh);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const RawFd;
                    let len = (*c).cmsg_len as usize - (data as usize - c as usize);
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.add(i));
                        if fd >= 0 {
                            self.fds.push(OwnedFd::from_raw_fd(fd));
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&mh, c);
            }
        }
        if self.fds.len() > MAX_FDS {
            too_many = true;
        }
        if too_many {
            self.fds.clear();
            return Err(ProtocolError::TooManyFds);
        }
        if n == 0 {
            return Err(ProtocolError::Closed);
        }
        Ok(Some(n as usize))
    }

    /// Send one message with its descriptors; waits (bounded) for room.
    pub fn send(&self, header: Header, payload: &[u8], fds: &[RawFd]) -> Result<(), ProtocolError> {
        if fds.len() > MAX_FDS {
            return Err(ProtocolError::TooManyFds);
        }
        let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
        bytes.extend_from_slice(&header.to_bytes());
        bytes.extend_from_slice(payload);
        let end = Instant::now() + self.send_timeout;
        let mut sent = 0;
        while sent < bytes.len() {
            let with_fds = if sent == 0 { fds } else { &[] };
            match self.send_some(&bytes[sent..], with_fds) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ProtocolError::Timeout);
                    }
                    poll_fd(self.sock.as_raw_fd(), libc::POLLOUT, left.as_millis().clamp(1, 1000) as i32);
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe || e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(ProtocolError::Closed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// A reply to `request` from the backend.
    pub fn send_reply(&self, request: u32, payload: &[u8]) -> Result<(), ProtocolError> {
        let h = Header { request, flags: VERSION | FLAG_REPLY, size: payload.len() as u32 };
        self.send(h, payload, &[])
    }

    fn send_some(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
        let mut cbuf = [0u64; 16]; // 128 bytes: room for MAX_FDS descriptors
        let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
        // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        if !fds.is_empty() {
            let len = std::mem::size_of_val(fds);
            mh.msg_control = cbuf.as_mut_ptr().cast();
            mh.msg_controllen = cmsg_space(len) as _;
            // SAFETY: cbuf holds CMSG_SPACE(8 fds) = 56 bytes < 128; one header written in place.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&mh);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(len as u32) as _;
                std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c) as *mut RawFd, fds.len());
            }
        }
        // SAFETY: sendmsg reads the iovec and control buffer set up above.
        let n = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &mh, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

/// poll(2) on one descriptor; true when any event (including hangup) is set.
pub fn poll_fd(fd: RawFd, events: i16, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    n > 0 && p.revents != 0
}

/// A listening socket, its file removed when its last `Listener` goes.
pub struct Listener {
    shared: Arc<Listening>,
}

struct Listening {
    sock: UnixListener,
    path: PathBuf,
    /// The name of the app it listens for.
    owner: String,
}

/// The sockets this process listens on, by path.
static LISTENING: Mutex<BTreeMap<PathBuf, Weak<Listening>>> = Mutex::new(BTreeMap::new());

impl Listener {
    /// A waiting peer's connection; WouldBlock when none waits.
    pub fn accept(&self) -> io::Result<UnixStream> {
        self.shared.sock.accept().map(|(s, _)| s)
    }
    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        // Under the table's lock, so that `listen` sees the path either
        // still served or gone with its file.
        let mut t = LISTENING.lock().unwrap_or_else(|e| e.into_inner());
        let _ = std::fs::remove_file(&self.path);
        t.retain(|_, w| w.strong_count() > 0);
    }
}

/// Listen on `path` (non-blocking) for app `owner`, or share the socket
/// this process listens on there for an app of that name. A socket file
/// nobody listens on is removed first; anything else at the path is an
/// error naming it.
pub fn listen(path: &Path, owner: &str) -> anyhow::Result<Listener> {
    let mut t = LISTENING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = t.get(path).and_then(Weak::upgrade) {
        anyhow::ensure!(
            shared.owner == owner,
            "socket `{}`: app `{}` of this process is listening on it",
            path.display(),
            shared.owner
        );
        return Ok(Listener { shared });
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(meta.file_type().is_socket(), "socket `{}`: exists and is not a socket", path.display());
        anyhow::ensure!(
            UnixStream::connect(path).is_err(),
            "socket `{}`: another process is listening on it",
            path.display()
        );
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("socket `{}`: removing the stale file: {e}", path.display()))?;
    }
    let sock = UnixListener::bind(path).map_err(|e| anyhow::anyhow!("socket `{}`: {e}", path.display()))?;
    sock.set_nonblocking(true)?;
    let shared = Arc::new(Listening { sock, path: path.to_path_buf(), owner: owner.to_string() });
    t.insert(path.to_path_buf(), Arc::downgrade(&shared));
    Ok(Listener { shared })
}
