//! The holder's syscalls, each a tiny safe function returning `io::Result`. nix does the
//! unsafe part (its `pipe2`, `fcntl` and `splice` are safe wrappers over libc), so the
//! holder keeps `unsafe_code = "deny"` with no exception.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{fcntl, splice as nix_splice, FcntlArg, OFlag, SpliceFFlags};

/// A pipe for splicing: (read end, write end, its size in bytes), non-blocking and
/// close-on-exec, of the kernel's default size (64 KiB).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let size = fcntl(&w, FcntlArg::F_GETPIPE_SZ)?;
    Ok((r, w, usize::try_from(size).unwrap_or(0).max(1)))
}

/// Ask the kernel to let pipe `w` hold `size` bytes; returns what it holds now. Linux
/// rounds up to a power of two of pages and refuses past `/proc/sys/fs/pipe-max-size`
/// or the user's `pipe-user-pages-soft`; the pipe keeps its size then.
pub fn grow_pipe(w: &OwnedFd, size: usize) -> io::Result<usize> {
    let _ = fcntl(
        w,
        FcntlArg::F_SETPIPE_SZ(i32::try_from(size).unwrap_or(i32::MAX)),
    );
    let now = fcntl(w, FcntlArg::F_GETPIPE_SZ)?;
    Ok(usize::try_from(now).unwrap_or(0).max(1))
}

/// Move up to `len` bytes from `from` to `to` in the kernel; one of the two must be a
/// pipe. Non-blocking: `WouldBlock` when `from` has nothing or `to` has no room.
/// `Ok(0)`: `from` is at EOF.
pub fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    Ok(nix_splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
    )?)
}
