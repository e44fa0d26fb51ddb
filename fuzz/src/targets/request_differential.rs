//! The fast path's request-head parser against a reference reading (httparse's tokens and
//! the RFC 9110/9112 rules, in src/reference.rs). It fails where the difference matters:
//! the codec takes (or hands to hyper, past its own checks) a request the reference
//! refuses for its framing, its Host or its target; or takes one with another head
//! length, body framing or destination; or renders an upstream head that the reference
//! reads with another framing or Host. The codec refusing more than the reference is
//! allowed (it is stricter on purpose, e.g. `Transfer-Encoding: gzip, chunked`).

use crate::reference::{judge, judge_lenient, Body, Verdict, Why};
use crate::{request_head, show};
use rampart_lb::fuzzing::{parse_request, Framing, RequestOutcome};

fn body(f: Framing) -> Body {
    match f {
        Framing::None => Body::None,
        Framing::Length(n) => Body::Length(n),
        Framing::Chunked => Body::Chunked,
        Framing::Close => panic!("a request read until the close"),
    }
}

/// One input: panics on what the target exists to find.
pub fn run(data: &[u8]) {
    let ours = parse_request(data, false);
    let theirs = judge(data);
    let says = || format!("{}: codec {ours:?}, reference {theirs:?}", show(data));
    match (&ours, &theirs) {
        (RequestOutcome::Partial, Verdict::Incomplete) => {}
        (RequestOutcome::Partial, _) | (_, Verdict::Incomplete) => {
            // Both read the tokens with httparse: only the codec's smaller field limit
            // may make it answer earlier.
            assert!(matches!(ours, RequestOutcome::Bad(431)), "{}", says());
        }
        (RequestOutcome::Bad(_), _) => {}
        (RequestOutcome::Refused, _) => panic!("no firewall, yet refused: {}", says()),
        (RequestOutcome::Acme, _) => panic!("no ACME order is pending: {}", says()),
        (RequestOutcome::Redirect, _) => panic!("no route redirects: {}", says()),
        (RequestOutcome::Complete(_), Verdict::Refuse(why)) => {
            let missed: Vec<Why> = why.iter().copied().filter(|w| w.matters()).collect();
            assert!(missed.is_empty(), "taken despite {missed:?}: {}", says());
        }
        (
            RequestOutcome::Complete(r),
            Verdict::Accept {
                head_len,
                body: b,
                host,
                http10,
            },
        ) => {
            assert_eq!(r.http10, *http10, "{}", says());
            assert_eq!(r.head_len, *head_len, "{}", says());
            assert_eq!(body(r.body), *b, "{}", says());
            // The upstream reads the head the codec rendered as the codec did.
            let up = judge_lenient(&r.upstream_head);
            let Verdict::Accept {
                head_len: n,
                body: ub,
                host: uh,
                ..
            } = &up
            else {
                panic!(
                    "upstream head refused: {up:?}: {} rendered {}",
                    says(),
                    show(&r.upstream_head)
                );
            };
            assert_eq!(*n, r.upstream_head.len());
            assert_eq!(ub, b, "upstream framing: {}", show(&r.upstream_head));
            assert_eq!(uh, host, "upstream host: {}", show(&r.upstream_head));
            assert!(request_head(&r.upstream_head).is_ok());
        }
    }
}
