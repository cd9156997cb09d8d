//! Splits the byte stream into JSON-RPC messages. OVSDB writes objects back to back with no
//! delimiter, so the reader tracks nesting (outside strings) and cuts when a top-level object
//! closes. Scanning is incremental: each byte is looked at once however the reads are split.

use crate::error::{Error, Result};

/// The largest message accepted; a bigger one means a broken or hostile peer.
const MAX_MESSAGE: usize = 256 << 20;

#[derive(Debug, Default)]
pub(crate) struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    /// Start of the message being scanned, once its `{` is seen.
    start: Option<usize>,
    depth: usize,
    in_string: bool,
    escape: bool,
}

impl Framer {
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, or `None` until more bytes arrive.
    pub(crate) fn next_message(&mut self) -> Result<Option<Vec<u8>>> {
        while self.scanned < self.buf.len() {
            let i = self.scanned;
            let b = self.buf[i];
            self.scanned += 1;
            if self.start.is_none() {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'{' => {
                        self.start = Some(i);
                        self.depth = 1;
                        continue;
                    }
                    _ => {
                        return Err(Error::protocol(
                            "message stream",
                            format!("unexpected byte {:?} between messages", b as char),
                        ));
                    }
                }
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        let start = self.start.take().unwrap_or(0);
                        let msg = self.buf[start..=i].to_vec();
                        self.buf.drain(..=i);
                        self.scanned = 0;
                        return Ok(Some(msg));
                    }
                }
                _ => {}
            }
        }
        if self.buf.len() > MAX_MESSAGE {
            return Err(Error::protocol(
                "message stream",
                format!("message larger than {MAX_MESSAGE} bytes"),
            ));
        }
        if self.start.is_none() {
            // Only whitespace so far: nothing to keep.
            self.buf.clear();
            self.scanned = 0;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> Result<Vec<String>> {
        let mut f = Framer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c);
            while let Some(m) = f.next_message()? {
                out.push(String::from_utf8(m).expect("utf8"));
            }
        }
        Ok(out)
    }

    /// (name, chunks as read, messages expected)
    type Case<'a> = (&'a str, Vec<&'a [u8]>, Vec<&'a str>);

    #[test]
    fn splits_messages() {
        let cases: Vec<Case> = vec![
            ("one", vec![b"{\"a\":1}"], vec!["{\"a\":1}"]),
            (
                "back to back",
                vec![b"{}{\"b\":[1,{}]}"],
                vec!["{}", "{\"b\":[1,{}]}"],
            ),
            ("whitespace", vec![b" \n{}\n {} "], vec!["{}", "{}"]),
            (
                "split",
                vec![b"{\"a\":", b"[1,", b"2]}{", b"}"],
                vec!["{\"a\":[1,2]}", "{}"],
            ),
            (
                "braces in strings",
                vec![br#"{"s":"}{]["}"#],
                vec![r#"{"s":"}{]["}"#],
            ),
            (
                "escaped quote",
                vec![br#"{"s":"a\"}"}"#],
                vec![r#"{"s":"a\"}"}"#],
            ),
            (
                "escape across reads",
                vec![br#"{"s":"a\"#, br#""}"}"#],
                vec![r#"{"s":"a\"}"}"#],
            ),
            (
                "escaped backslash",
                vec![br#"{"s":"\\"}{}"#],
                vec![r#"{"s":"\\"}"#, "{}"],
            ),
            ("incomplete", vec![b"{\"a\":"], vec![]),
        ];
        for (name, chunks, want) in cases {
            assert_eq!(split_all(&chunks).expect(name), want, "{name}");
        }
    }

    #[test]
    fn rejects_garbage_between_messages() {
        assert!(split_all(&[b"{}x"]).is_err());
        assert!(split_all(&[b"[1]"]).is_err());
    }
}

/// Property tests (issue 9's fuzzing): the framer on any byte stream, and on real messages
/// cut at any place.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use testkit::props;

    #[test]
    fn messages_come_out_whole_however_the_stream_is_cut() {
        props::check(
            "ovsdb framing: messages cut anywhere",
            5_000,
            (
                prop::collection::vec(
                    props::json().prop_map(|v| serde_json::json!({ "params": v })),
                    1..6,
                ),
                prop::collection::vec(1usize..64, 1..32),
            ),
            |(messages, cuts)| {
                // Compared as text: each frame must be exactly the bytes of one message.
                let messages: Vec<String> = messages.iter().map(|m| m.to_string()).collect();
                let stream: Vec<u8> = messages.concat().into_bytes();
                let mut f = Framer::default();
                let mut out = Vec::new();
                let mut at = 0;
                for len in cuts.iter().cycle() {
                    if at >= stream.len() {
                        break;
                    }
                    let end = (at + len).min(stream.len());
                    f.push(&stream[at..end]);
                    at = end;
                    while let Some(m) = f.next_message().expect("valid JSON frames") {
                        out.push(String::from_utf8(m).expect("UTF-8 in, UTF-8 out"));
                    }
                }
                prop_assert_eq!(out, messages);
                Ok(())
            },
        );
    }

    #[test]
    fn any_bytes_frame_or_fail_without_panicking() {
        props::check(
            "ovsdb framing: any bytes",
            20_000,
            prop::collection::vec(any::<u8>(), 0..512),
            |bytes| {
                let mut f = Framer::default();
                f.push(&bytes);
                while let Ok(Some(_)) = f.next_message() {}
                Ok(())
            },
        );
    }
}
