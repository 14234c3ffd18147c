//! The `postgres` ready check's two messages: the StartupMessage it sends, and the
//! reading of the server's first answer. As libpq's `PQping` (what `pg_isready` runs)
//! decides: a server that answers "cannot connect now" (SQLSTATE 57P03: starting up,
//! shutting down, in recovery) is not ready; any other answer (an authentication request,
//! or an error such as a role that does not exist) comes from a server that takes
//! sessions. Spoken from inside the controller, a check costs one connection, where
//! `pg_isready` is a process that takes 20-40 ms to start on a small machine.
//!
//! No crate does this alone: the Postgres client crates open whole sessions (and need
//! the right credentials), and a check must not.

/// SQLSTATE `cannot_connect_now`.
pub const CANNOT_CONNECT_NOW: &str = "57P03";

/// Longest first answer read: an ErrorResponse is a few hundred bytes.
pub const MAX_ANSWER: usize = 64 * 1024;

/// What the server's first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It takes sessions.
    Ready,
    /// It answered, and not yet (its message, for the wake's error).
    NotReady(String),
    /// Not enough bytes yet to tell.
    Incomplete,
    /// Not Postgres' protocol (what it was, for the wake's error).
    Garbage(String),
}

/// A protocol 3.0 StartupMessage for `user` and `database`.
pub fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes()); // 3.0
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    let mut m = len.to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

/// Read the server's first message from `buf` (what arrived so far).
pub fn answer(buf: &[u8]) -> Answer {
    let Some((&kind, rest)) = buf.split_first() else {
        return Answer::Incomplete;
    };
    match kind {
        // An authentication request (or AuthenticationOk): it takes sessions.
        b'R' => Answer::Ready,
        b'E' => {
            let Some(len) = rest.get(..4) else {
                return Answer::Incomplete;
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if !(4..=MAX_ANSWER).contains(&len) {
                return Answer::Garbage(format!("an error message of length {len}"));
            }
            let Some(body) = rest.get(4..len) else {
                return Answer::Incomplete;
            };
            let (code, message) = error_fields(body);
            if code.as_deref() == Some(CANNOT_CONNECT_NOW) {
                Answer::NotReady(message.unwrap_or_else(|| CANNOT_CONNECT_NOW.to_string()))
            } else {
                Answer::Ready
            }
        }
        other => Answer::Garbage(format!("a first byte {other:#04x}, not a Postgres answer")),
    }
}

/// The SQLSTATE (`C`) and message (`M`) fields of an ErrorResponse body.
fn error_fields(body: &[u8]) -> (Option<String>, Option<String>) {
    let (mut code, mut message) = (None, None);
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some(end) = after.iter().position(|b| *b == 0) else {
            break;
        };
        let value = String::from_utf8_lossy(&after[..end]).into_owned();
        match field {
            b'C' => code = Some(value),
            b'M' => message = Some(value),
            _ => {}
        }
        rest = &after[end + 1..];
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (f, v) in fields {
            body.push(*f);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = vec![b'E'];
        m.extend_from_slice(&u32::try_from(body.len() + 4).expect("small").to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn the_startup_message_is_protocol_3_with_user_and_database() {
        let m = startup_message("postgres", "app");
        assert_eq!(
            &m[..4],
            &u32::try_from(m.len()).expect("small").to_be_bytes()
        );
        assert_eq!(&m[4..8], &[0, 3, 0, 0]);
        assert_eq!(&m[8..], b"user\0postgres\0database\0app\0\0");
    }

    #[test]
    fn starting_up_is_not_ready_and_any_other_answer_is() {
        let starting = error(&[
            (b'S', "FATAL"),
            (b'C', "57P03"),
            (b'M', "the database system is starting up"),
        ]);
        assert_eq!(
            answer(&starting),
            Answer::NotReady("the database system is starting up".into())
        );
        let no_role = error(&[
            (b'S', "FATAL"),
            (b'C', "28000"),
            (b'M', "role does not exist"),
        ]);
        assert_eq!(answer(&no_role), Answer::Ready);
        // AuthenticationMD5Password, then AuthenticationOk.
        assert_eq!(answer(&[b'R', 0, 0, 0, 12, 0, 0, 0, 5]), Answer::Ready);
        assert_eq!(answer(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]), Answer::Ready);
    }

    #[test]
    fn a_partial_answer_waits_for_more_and_garbage_is_named() {
        let starting = error(&[(b'C', "57P03")]);
        for cut in 0..starting.len() {
            assert_eq!(answer(&starting[..cut]), Answer::Incomplete, "cut at {cut}");
        }
        assert!(matches!(answer(b"HTTP/1.1 400"), Answer::Garbage(_)));
        assert!(matches!(
            answer(&[b'E', 0xff, 0xff, 0xff, 0xff]),
            Answer::Garbage(_)
        ));
        // Fields without their terminators are read as far as they go.
        assert_eq!(answer(&[b'E', 0, 0, 0, 7, b'C', b'5', b'7']), Answer::Ready);
    }
}
