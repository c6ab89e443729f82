use super::*;

fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    h.extend_from_slice(block);
    h
}

fn tcp4_block() -> Vec<u8> {
    let mut b = vec![203, 0, 113, 7, 10, 0, 0, 1];
    b.extend_from_slice(&4321u16.to_be_bytes());
    b.extend_from_slice(&443u16.to_be_bytes());
    b
}

fn header(len: usize, source: &str) -> Result<Parsed, Refusal> {
    Ok(Parsed::Header {
        len,
        source: Some(source.parse().unwrap()),
    })
}

#[test]
fn v1_tcp4_tcp6_and_unknown() {
    let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 4321 443\r\nGET /";
    assert_eq!(parse(line), header(42, "203.0.113.7:4321"));
    let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 4321 443\r\n";
    assert_eq!(parse(line), header(line.len(), "[2001:db8::7]:4321"));
    let line = b"PROXY UNKNOWN\r\n";
    assert_eq!(
        parse(line),
        Ok(Parsed::Header {
            len: 15,
            source: None
        })
    );
    let line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
    assert_eq!(
        parse(line),
        Ok(Parsed::Header {
            len: line.len(),
            source: None
        })
    );
}

#[test]
fn v1_partial_then_invalid_beyond_its_bound() {
    let full = b"PROXY TCP4 203.0.113.7 10.0.0.1 4321 443\r\n";
    for n in 0..full.len() - 1 {
        assert_eq!(parse(&full[..n]), Ok(Parsed::Partial), "{n}");
    }
    let mut long = b"PROXY TCP4 ".to_vec();
    long.resize(V1_MAX, b'1');
    assert_eq!(parse(&long), Err(Refusal::Invalid));
    long.truncate(V1_MAX - 1);
    assert_eq!(parse(&long), Ok(Parsed::Partial));
}

/// Malformed v1 lines are invalid; anything that does not start like a header is missing.
#[test]
fn refusals_name_their_reason() {
    use Refusal::{Invalid, Missing};
    for (start, reason) in [
        (&b"PROXY TCP4 203.0.113.7 10.0.0.1 4321\r\n"[..], Invalid),
        (b"PROXY TCP4 2001:db8::7 10.0.0.1 4321 443\r\n", Invalid),
        (b"PROXY TCP6 2001:db8::7 10.0.0.1 4321 443\r\n", Invalid),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 +4321 443\r\n", Invalid),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 4321 65536\r\n", Invalid),
        (b"PROXY TCP4  203.0.113.7 10.0.0.1 4321 443\r\n", Invalid),
        (b"PROXY UDP4 203.0.113.7 10.0.0.1 4321 443\r\n", Invalid),
        (b"PROXY \xff\r\n", Invalid),
        (b"GET / HTTP/1.1\r\n", Missing),
        (b"POST", Missing),
        (b"\x16\x03\x01", Missing),
        (b"\r\n\r\nX", Missing),
        (b"PRI * HTTP/2.0", Missing),
    ] {
        assert_eq!(parse(start), Err(reason), "{start:?}");
    }
}

#[test]
fn v2_proxy_local_and_families() {
    let h = v2(1, 0x11, &tcp4_block());
    assert_eq!(parse(&h), header(28, "203.0.113.7:4321"));
    let mut block = vec![0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
    block.extend_from_slice(&[0; 16]);
    block.extend_from_slice(&[0x10, 0xe1, 1, 187]);
    // A TLV after the addresses (AWS: the VPC endpoint id) is skipped.
    block.extend_from_slice(&[0xea, 0, 3, b'v', b'p', b'c']);
    let h = v2(1, 0x21, &block);
    assert_eq!(parse(&h), header(h.len(), "[2001:db8::7]:4321"));
    // LOCAL: the balancer's own (health check) connection; any family.
    let h = v2(0, 0x00, &[]);
    assert_eq!(
        parse(&h),
        Ok(Parsed::Header {
            len: 16,
            source: None
        })
    );
    let h = v2(0, 0x11, &tcp4_block());
    assert_eq!(
        parse(&h),
        Ok(Parsed::Header {
            len: 28,
            source: None
        })
    );
    let h = v2(1, 0x31, &[0; 216]);
    assert_eq!(
        parse(&h),
        Ok(Parsed::Header {
            len: 232,
            source: None
        })
    );
}

#[test]
fn v2_malformed_is_invalid_and_short_is_partial() {
    let good = v2(1, 0x11, &tcp4_block());
    for n in 0..good.len() {
        assert_eq!(parse(&good[..n]), Ok(Parsed::Partial), "{n}");
    }
    let mut bad_version = good.clone();
    bad_version[12] = 0x11;
    let mut bad_command = good.clone();
    bad_command[12] = 0x22;
    for h in [
        bad_version,
        bad_command,
        v2(1, 0x12, &tcp4_block()),
        v2(1, 0x11, &tcp4_block()[..11]),
        v2(1, 0x21, &[0; 35]),
        v2(1, 0x41, &[]),
        v2(1, 0x11, &[0; V2_MAX_BLOCK + 1]),
    ] {
        assert_eq!(parse(&h), Err(Refusal::Invalid), "{h:?}");
    }
}

#[tokio::test]
async fn the_bytes_after_the_header_are_kept_in_front_of_the_stream() {
    let mut sent = v2(1, 0x11, &tcp4_block());
    sent.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let (mut client, mut server) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        // In pieces: the reader must wait for the rest, not take a piece for the whole.
        for piece in sent.chunks(5) {
            client.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        client
    });
    let (source, rest) = read_header(&mut server).await.unwrap();
    assert_eq!(source, Some("203.0.113.7:4321".parse().unwrap()));
    let _client = writer.await.unwrap();
    let mut stream = Prefixed::new(rest, server);
    let mut got = vec![0; 16];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"GET / HTTP/1.1\r\n");
}

#[tokio::test]
async fn a_connection_that_ends_early_is_refused() {
    let (client, mut server) = tokio::io::duplex(64);
    drop(client);
    assert_eq!(read_header(&mut server).await, Err(Refusal::Missing));
    let (mut client, mut server) = tokio::io::duplex(64);
    tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4")
        .await
        .unwrap();
    drop(client);
    assert_eq!(read_header(&mut server).await, Err(Refusal::Invalid));
}
