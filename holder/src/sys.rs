//! The holder's syscalls, each a tiny safe function returning `io::Result`. nix does the
//! unsafe part (its `pipe2`, `fcntl` and `splice` are safe wrappers over libc), so the
//! holder keeps `unsafe_code = "deny"` with no exception.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{fcntl, splice as nix_splice, FcntlArg, OFlag, SpliceFFlags};

/// A pipe for splicing: (read end, write end), non-blocking and close-on-exec, asked to
/// hold `size` bytes (Linux rounds up to a power of two of pages; an unprivileged process
/// may be held to `/proc/sys/fs/pipe-max-size`: the default size is kept then).
/// Returns the ends and the size the kernel granted.
pub fn pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let _ = fcntl(
        &w,
        FcntlArg::F_SETPIPE_SZ(i32::try_from(size).unwrap_or(i32::MAX)),
    );
    let granted = fcntl(&w, FcntlArg::F_GETPIPE_SZ)?;
    Ok((r, w, usize::try_from(granted).unwrap_or(0).max(1)))
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
