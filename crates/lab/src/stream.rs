//! A continuous ping from one pod to an address, to measure what an
//! operation costs the data path: `ping -c COUNT -i INTERVAL` inside the pod
//! (iputils; root may go below 200 ms), started before the operation and
//! awaited after it. With a fixed count, ping waits for the last replies
//! before it reports, so a packet still in flight is never counted as lost;
//! the sequence numbers that never came back give the longest outage.

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use thiserror::Error;

use crate::pod::Pod;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot start ping in {pod}")]
    Spawn {
        pod: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for ping in {pod}")]
    Wait {
        pod: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ping in {pod} printed no summary ({status}): {stderr}")]
    NoSummary {
        pod: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a continuous ping saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    pub sent: u32,
    pub received: u32,
    /// The longest run of consecutive sequence numbers without a reply.
    pub longest_gap: u32,
    pub interval: Duration,
}

impl Loss {
    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.received)
    }

    /// The longest outage the ping could see: the longest gap times the interval.
    pub fn longest_outage(&self) -> Duration {
        self.interval * self.longest_gap
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} lost (one every {:?}; longest outage {:?})",
            self.lost(),
            self.sent,
            self.interval,
            self.longest_outage()
        )
    }
}

/// A running ping; [`Stream::finish`] waits for it and counts.
pub struct Stream {
    pod: String,
    child: Option<Child>,
    interval: Duration,
}

impl Stream {
    /// Starts `count` pings from `pod` to `to`, one every `interval`.
    pub fn start(pod: &Pod, to: Ipv4Addr, interval: Duration, count: u32) -> Result<Stream> {
        let mut cmd = pod.netns.command("ping");
        cmd.args([
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            &format!("{:.3}", interval.as_secs_f64()),
            "-W",
            "1",
            &to.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            pod: pod.name.clone(),
            source,
        })?;
        Ok(Stream {
            pod: pod.name.clone(),
            child: Some(child),
            interval,
        })
    }

    /// Waits until every ping is sent and answered (or timed out), and counts.
    pub fn finish(mut self) -> Result<Loss> {
        let child = self.child.take().expect("a stream is finished once");
        let out = child.wait_with_output().map_err(|source| Error::Wait {
            pod: self.pod.clone(),
            source,
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        parse(&stdout, self.interval).ok_or_else(|| Error::NoSummary {
            pod: self.pod.clone(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Counts from ping's output: the summary line for sent/received, the reply
/// lines' `icmp_seq` for the longest gap. Pure.
pub fn parse(stdout: &str, interval: Duration) -> Option<Loss> {
    let summary = stdout.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = summary
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
    let sent = numbers.next()?;
    let received = numbers.next()?;
    let mut seqs: Vec<u32> = stdout
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq=")?.parse().ok())
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    // Sequence numbers run 1..=sent; gaps before the first, between, and after the last.
    let mut longest_gap = 0;
    let mut prev = 0;
    for s in seqs.iter().copied().chain([sent + 1]) {
        longest_gap = longest_gap.max(s.saturating_sub(prev + 1));
        prev = s;
    }
    Some(Loss {
        sent,
        received,
        longest_gap,
        interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_gaps() {
        let out = "PING 10.244.2.10 (10.244.2.10) 56(84) bytes of data.
64 bytes from 10.244.2.10: icmp_seq=1 ttl=64 time=0.3 ms
64 bytes from 10.244.2.10: icmp_seq=2 ttl=64 time=0.3 ms
64 bytes from 10.244.2.10: icmp_seq=6 ttl=64 time=0.3 ms

--- 10.244.2.10 ping statistics ---
7 packets transmitted, 3 received, 57.1429% packet loss, time 120ms
";
        let l = parse(out, Duration::from_millis(20)).unwrap();
        assert_eq!((l.sent, l.received, l.lost(), l.longest_gap), (7, 3, 4, 3));
        assert_eq!(l.longest_outage(), Duration::from_millis(60));
        let clean = "2 packets transmitted, 2 received, 0% packet loss, time 20ms\n\
            64 bytes from 1.2.3.4: icmp_seq=1 ttl=64\n64 bytes from 1.2.3.4: icmp_seq=2 ttl=64\n";
        let l = parse(clean, Duration::from_millis(10)).unwrap();
        assert_eq!((l.lost(), l.longest_gap), (0, 0));
        assert_eq!(
            parse("ping: connect: Network is unreachable", Duration::ZERO),
            None
        );
    }
}
