//! Where the frames of a relayed WebSocket begin and end (RFC 6455 §5.2), so the gateway can
//! put a close frame of its own between two of them when the session behind the tunnel ends.
//! Nothing is decoded or checked: the relay copies bytes as they come, and this only follows
//! the frame headers and skips the payloads. A header it cannot follow (a 64-bit length with
//! its top bit set) loses the count for good: the tunnel is then closed without a frame
//! rather than with one in the middle of somebody else's.

/// The longest frame header: 2 bytes, a 64-bit extended length, a 4-byte masking key.
const MAX_HEADER: usize = 14;

/// Follows one direction of a WebSocket byte stream.
#[derive(Debug, Clone)]
pub struct FrameBoundaries {
    header: [u8; MAX_HEADER],
    /// Bytes of the current header seen so far (0: between frames or inside a payload).
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    lost: bool,
}

impl Default for FrameBoundaries {
    fn default() -> Self {
        FrameBoundaries {
            header: [0; MAX_HEADER],
            header_len: 0,
            payload_left: 0,
            lost: false,
        }
    }
}

impl FrameBoundaries {
    /// Has every frame begun so far been relayed whole?
    pub fn between_frames(&self) -> bool {
        !self.lost && self.header_len == 0 && self.payload_left == 0
    }

    /// Follows `bytes`, the next ones relayed in this direction.
    pub fn relayed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let skipped = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= skipped as u64;
                bytes = &bytes[skipped..];
                continue;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if let Some(payload) = self.complete_header() {
                self.header_len = 0;
                self.payload_left = payload;
            }
        }
    }

    /// The payload length once the header seen so far is whole.
    fn complete_header(&mut self) -> Option<u64> {
        let h = &self.header[..self.header_len];
        if h.len() < 2 {
            return None;
        }
        let masked = h[1] & 0x80 != 0;
        let (length_bytes, short) = match h[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let mask_bytes = if masked { 4 } else { 0 };
        if h.len() < 2 + length_bytes + mask_bytes {
            return None;
        }
        let payload = match short {
            Some(n) => n,
            None => {
                let mut be = [0u8; 8];
                be[8 - length_bytes..].copy_from_slice(&h[2..2 + length_bytes]);
                u64::from_be_bytes(be)
            }
        };
        if payload >> 63 != 0 {
            // RFC 6455 §5.2: the most significant bit must be 0. Nothing after this can be
            // trusted to be a boundary.
            self.lost = true;
            return None;
        }
        Some(payload)
    }
}

/// The close frame the gateway sends when it ends a tunnel: code 1008 (policy violation),
/// reason "session ended". Frames towards a server must be masked (§5.3); the key only
/// needs to be unpredictable to defeat cache poisoning by scripts, which a frame the gateway
/// writes is not, so the key is fixed.
pub fn close_frame(masked: bool) -> Vec<u8> {
    const REASON: &[u8] = b"session ended";
    let mut payload = Vec::with_capacity(2 + REASON.len());
    payload.extend_from_slice(&1008u16.to_be_bytes());
    payload.extend_from_slice(REASON);
    // FIN + opcode 8 (close); a control frame's payload is at most 125 bytes (§5.5).
    let mut frame = vec![0x88, payload.len() as u8];
    if masked {
        const KEY: [u8; 4] = [0x6d, 0x67, 0x61, 0x74];
        frame[1] |= 0x80;
        frame.extend_from_slice(&KEY);
        frame.extend(payload.iter().zip(KEY.iter().cycle()).map(|(b, k)| b ^ k));
    } else {
        frame.extend_from_slice(&payload);
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header for `len` payload bytes, masked or not, and its payload.
    pub(crate) fn frame(len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let mask = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(mask | len as u8),
            126..=0xffff => {
                f.push(mask | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0xab, len));
        f
    }

    #[test]
    fn boundaries_are_found_whatever_the_reads_split() {
        let stream: Vec<u8> = [
            frame(0, false),
            frame(5, true),
            frame(125, false),
            frame(126, true),
            frame(70_000, false),
        ]
        .concat();
        let ends: Vec<usize> = {
            let mut at = 0;
            [0usize, 5, 125, 126, 70_000]
                .iter()
                .zip([false, true, false, true, false])
                .map(|(len, masked)| {
                    at += frame(*len, masked).len();
                    at
                })
                .collect()
        };
        for step in [1, 2, 3, 7, 64, 4096, stream.len()] {
            let mut b = FrameBoundaries::default();
            let mut at = 0;
            for chunk in stream.chunks(step) {
                b.relayed(chunk);
                at += chunk.len();
                assert_eq!(
                    b.between_frames(),
                    ends.contains(&at),
                    "step {step} at {at}"
                );
            }
        }
    }

    #[test]
    fn a_length_with_its_top_bit_set_loses_the_count() {
        let mut b = FrameBoundaries::default();
        b.relayed(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!b.between_frames());
        b.relayed(&frame(0, false));
        assert!(!b.between_frames(), "lost for good");
    }

    #[test]
    fn the_close_frame_says_1008_session_ended() {
        let plain = close_frame(false);
        assert_eq!(&plain[..4], &[0x88, 15, 0x03, 0xf0]);
        assert_eq!(&plain[4..], b"session ended");
        let masked = close_frame(true);
        assert_eq!(masked[1], 0x80 | 15);
        let key = &masked[2..6];
        let unmasked: Vec<u8> = masked[6..]
            .iter()
            .zip(key.iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect();
        assert_eq!(unmasked, plain[2..]);
        let mut b = FrameBoundaries::default();
        b.relayed(&masked);
        assert!(b.between_frames(), "a whole frame itself");
    }
}
