//! The client a request from a trusted proxy speaks for, read from `X-Forwarded-For`
//! (pure; unit-tested here).

use std::net::IpAddr;

/// Walking the `X-Forwarded-For` entries of `fields` (in the order the fields came) from
/// the right, the nearest hop first: the first address that `trusted` does not claim (the
/// client the proxies saw), as nginx's `real_ip_recursive`; when every address is a
/// trusted proxy, the farthest. Entries may carry a port (`192.0.2.1:443`,
/// `[2001:db8::1]:443`). An entry that is not an address ends the walk: what was found
/// before it stands, and with nothing before it (the nearest hop wrote garbage) there is
/// no forwarded client (`None`; the peer is judged instead).
pub fn forwarded_client(fields: &[&[u8]], trusted: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    let mut found = None;
    for field in fields.iter().rev() {
        for entry in field.rsplit(|b| *b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_entry(entry) else {
                return found;
            };
            found = Some(ip);
            if !trusted(ip) {
                return found;
            }
        }
    }
    found
}

/// An address, without a port or brackets; IPv4-mapped IPv6 as IPv4.
fn parse_entry(e: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(e).ok()?;
    let ip: IpAddr = if let Some(rest) = s.strip_prefix('[') {
        rest.split_once(']')?.0.parse().ok()?
    } else if let Ok(ip) = s.parse() {
        ip
    } else {
        // `a.b.c.d:port`
        let (host, port) = s.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        host.parse::<std::net::Ipv4Addr>().ok()?.into()
    };
    Some(super::cidr::canonical(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    fn in_10(ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v) if v.octets()[0] == 10)
    }

    #[test]
    fn the_nearest_untrusted_address_is_the_client() {
        let f: &[&[u8]] = &[b"198.51.100.7, 10.0.0.2", b"10.0.0.1"];
        assert_eq!(forwarded_client(f, in_10), Some(ip("198.51.100.7")));
        // What the client itself wrote, left of the address the proxy saw, is not believed.
        let f: &[&[u8]] = &[b"6.6.6.6, 198.51.100.7"];
        assert_eq!(forwarded_client(f, in_10), Some(ip("198.51.100.7")));
        // Every hop trusted: the farthest.
        let f: &[&[u8]] = &[b"10.9.9.9,10.0.0.1"];
        assert_eq!(forwarded_client(f, in_10), Some(ip("10.9.9.9")));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_read_and_garbage_stops_the_walk() {
        let f: &[&[u8]] = &[b"[2001:db8::7]:443"];
        assert_eq!(forwarded_client(f, in_10), Some(ip("2001:db8::7")));
        let f: &[&[u8]] = &[b"203.0.113.9:1234"];
        assert_eq!(forwarded_client(f, in_10), Some(ip("203.0.113.9")));
        let f: &[&[u8]] = &[b"::ffff:203.0.113.9"];
        assert_eq!(forwarded_client(f, in_10), Some(ip("203.0.113.9")));
        // Garbage at the nearest hop: no forwarded client.
        let f: &[&[u8]] = &[b"198.51.100.7, unknown"];
        assert_eq!(forwarded_client(f, in_10), None);
        // Garbage past a trusted hop: the trusted hop stands.
        let f: &[&[u8]] = &[b"evil, 10.0.0.3"];
        assert_eq!(forwarded_client(f, in_10), Some(ip("10.0.0.3")));
        assert_eq!(forwarded_client(&[], in_10), None);
        assert_eq!(forwarded_client(&[b" , "], in_10), None);
    }
}
