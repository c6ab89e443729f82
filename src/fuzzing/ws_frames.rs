//! Target `ws_frames`: the frame boundaries a WebSocket tunnel follows (`proxy::ws_frames`),
//! on any bytes read in any pieces, against an independent walk over the whole stream.

use super::Input;
use crate::proxy::ws_frames::FrameBoundaries;

/// Where frames end in `bytes` (0 included), read plainly from the start: header, extended
/// length, masking key, payload, again; a header that is cut off, a payload that runs past
/// the end, or a 64-bit length with its top bit set ends the walk.
fn reference_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = vec![0];
    let mut at = 0usize;
    while let Some(&[_, second]) = bytes.get(at..at + 2) {
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header = 2 + extended + if second & 0x80 != 0 { 4 } else { 0 };
        let Some(length_bytes) = bytes.get(at + 2..at + 2 + extended) else {
            break;
        };
        if bytes.len() < at + header {
            break;
        }
        let length = if extended == 0 {
            u128::from(second & 0x7f)
        } else {
            length_bytes
                .iter()
                .fold(0u128, |n, &b| (n << 8) | u128::from(b))
        };
        if length >> 63 != 0 {
            break;
        }
        let end = at as u128 + header as u128 + length;
        if end > bytes.len() as u128 {
            break;
        }
        at = end as usize;
        ends.push(at);
    }
    ends
}

/// Input: a byte `k`, `k % 8` split points (two bytes each), then the stream.
/// - After every byte fed singly, `between_frames` is true exactly at the reference's ends.
/// - Fed in the fuzz-chosen pieces, it agrees at every piece's end.
pub fn ws_frames(data: &[u8]) {
    let mut input = Input::new(data);
    let splits = usize::from(input.byte() % 8);
    let mut cuts: Vec<usize> = (0..splits).map(|_| usize::from(input.u16())).collect();
    let stream = input.rest();
    let ends = reference_ends(stream);

    let mut one_by_one = FrameBoundaries::default();
    assert!(one_by_one.between_frames());
    for (i, byte) in stream.iter().enumerate() {
        one_by_one.relayed(std::slice::from_ref(byte));
        assert_eq!(
            one_by_one.between_frames(),
            ends.binary_search(&(i + 1)).is_ok(),
            "after byte {i}"
        );
    }

    cuts.retain(|&c| c <= stream.len());
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut pieces = FrameBoundaries::default();
    let mut from = 0;
    for cut in cuts {
        pieces.relayed(&stream[from..cut]);
        from = cut;
        assert_eq!(
            pieces.between_frames(),
            ends.binary_search(&cut).is_ok(),
            "after a piece ending at {cut}"
        );
    }
}
