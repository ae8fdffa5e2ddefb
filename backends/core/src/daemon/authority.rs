//! Lets every gRPC client in, whatever `:authority` it sends over the unix socket.
//!
//! A unix socket has no host name, and clients fill HTTP/2's `:authority` as they please: gRPC-Go
//! (the kubelet, the sidecars) sends `localhost`, gRPC core (Python's grpcio, C++, Ruby) the socket
//! path percent-encoded (`tmp%2Fcsi.sock`), grpc-java the raw path. The HTTP/2 stack under tonic
//! (h2) refuses the last two as malformed and resets every stream with PROTOCOL_ERROR, so those
//! clients could not call us at all. [`LenientAuthority`] sits between the socket and the server:
//! it decodes each header block the client sends, replaces an `:authority` that is not a valid URI
//! authority with `localhost`, and encodes the block again. On a unix socket the authority
//! selects nothing, so nothing is lost. Everything else passes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What the server is given instead of an authority it would refuse.
const FALLBACK_AUTHORITY: &[u8] = b"localhost";
/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, which opens every client connection.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE there is, so every server accepts our frames.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// A header block larger than this ends the connection rather than growing memory without bound.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// HTTP/2's default SETTINGS_HEADER_TABLE_SIZE, which the server does not change.
const DEFAULT_HEADER_TABLE_SIZE: usize = 4096;

/// A client connection whose header blocks are made acceptable to the server (see the module
/// documentation); writes pass straight through.
#[derive(Debug)]
pub struct LenientAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    eof: bool,
}

impl<S> LenientAuthority<S> {
    /// Wraps a freshly accepted connection (before the client preface).
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::default(),
            eof: false,
        }
    }
}

impl<S: Connected> Connected for LenientAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LenientAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.rewriter.output.is_empty() {
                let n = buf.remaining().min(this.rewriter.output.len());
                buf.put_slice(&this.rewriter.output[..n]);
                this.rewriter.output.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.rewriter.feed(read.filled())?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LenientAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A header block being collected from HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct PendingBlock {
    stream: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The client-to-server byte stream, rewritten frame by frame.
struct Rewriter {
    input: Vec<u8>,
    output: Vec<u8>,
    preface_left: usize,
    /// Payload bytes of a frame that passes through unchanged, still to copy.
    passthrough_left: usize,
    block: Option<PendingBlock>,
    /// Mirrors the client's encoder, so its references into the dynamic table resolve.
    decoder: Decoder<'static>,
    /// Encodes what the server sees; with no dynamic table it never refers to an earlier block,
    /// so the server's table can never disagree with it.
    encoder: Encoder<'static>,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("buffered_in", &self.input.len())
            .field("buffered_out", &self.output.len())
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut encoder = Encoder::new();
        encoder.set_max_table_size(0);
        let mut decoder = Decoder::new();
        // What the server advertises (SETTINGS_HEADER_TABLE_SIZE, default 4096): a client
        // asking for a larger table is refused, as h2 would refuse it, instead of growing it.
        decoder.set_max_allowed_table_size(DEFAULT_HEADER_TABLE_SIZE);
        Self {
            input: Vec::new(),
            output: Vec::new(),
            preface_left: PREFACE_LEN,
            passthrough_left: 0,
            block: None,
            decoder,
            encoder,
        }
    }
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2 client: {what}"))
}

impl Rewriter {
    /// Takes bytes from the client; what is ready for the server lands in `output`.
    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            let available = self.input.len() - at;
            // The preface and the payload of frames we do not touch are copied as they arrive.
            let copy = if self.preface_left > 0 {
                &mut self.preface_left
            } else {
                &mut self.passthrough_left
            };
            if *copy > 0 {
                let n = (*copy).min(available);
                if n == 0 {
                    break;
                }
                self.output.extend_from_slice(&self.input[at..at + n]);
                *copy -= n;
                at += n;
                continue;
            }
            if available < FRAME_HEADER_LEN {
                break;
            }
            let header = &self.input[at..at + FRAME_HEADER_LEN];
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let (kind, flags) = (header[3], header[4]);
            if len > MAX_FRAME_PAYLOAD {
                // The server advertises no larger SETTINGS_MAX_FRAME_SIZE: h2 would refuse the
                // frame too; refusing it here keeps a client from making us buffer 16 MiB.
                return Err(malformed("frame larger than the 16 KiB the server accepts"));
            }
            if kind != HEADERS && kind != CONTINUATION {
                self.output.extend_from_slice(header);
                self.passthrough_left = len;
                at += FRAME_HEADER_LEN;
                continue;
            }
            if available < FRAME_HEADER_LEN + len {
                break;
            }
            let stream: [u8; 4] = header[5..9].try_into().expect("a frame header has 9 bytes");
            let payload = &self.input[at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + len];
            let block = if kind == HEADERS {
                if self.block.is_some() {
                    return Err(malformed("HEADERS inside an unfinished header block"));
                }
                start_block(stream, flags, payload)?
            } else {
                let mut block = self
                    .block
                    .take()
                    .filter(|b| b.stream == stream)
                    .ok_or_else(|| malformed("CONTINUATION outside a header block"))?;
                block.fragment.extend_from_slice(payload);
                block
            };
            at += FRAME_HEADER_LEN + len;
            if block.fragment.len() > MAX_HEADER_BLOCK {
                return Err(malformed("header block over 1 MiB"));
            }
            if flags & END_HEADERS != 0 {
                self.emit(&block)?;
            } else {
                self.block = Some(block);
            }
        }
        self.input.drain(..at);
        Ok(())
    }

    /// Decodes a whole header block, fixes its authority, and writes it as HEADERS (and
    /// CONTINUATION) frames.
    fn emit(&mut self, block: &PendingBlock) -> io::Result<()> {
        let mut headers = self
            .decoder
            .decode(&block.fragment)
            .map_err(|e| malformed(&format!("undecodable header block ({e:?})")))?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" && !is_valid_authority(value) {
                *value = FALLBACK_AUTHORITY.to_vec();
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let first_room = MAX_FRAME_PAYLOAD - block.priority.map_or(0, |p| p.len());
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        self.write_frame(HEADERS, flags, block.stream, &[priority, first]);
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
            let flags = if after.is_empty() { END_HEADERS } else { 0 };
            self.write_frame(CONTINUATION, flags, block.stream, &[chunk]);
            rest = after;
        }
        Ok(())
    }

    fn write_frame(&mut self, kind: u8, flags: u8, stream: [u8; 4], parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len).expect("frame payloads are at most 16 KiB");
        self.output.extend_from_slice(&len.to_be_bytes()[1..]);
        self.output.extend_from_slice(&[kind, flags]);
        self.output.extend_from_slice(&stream);
        for part in parts {
            self.output.extend_from_slice(part);
        }
    }
}

/// The header block fragment of a HEADERS frame, without padding and priority.
fn start_block(stream: [u8; 4], flags: u8, payload: &[u8]) -> io::Result<PendingBlock> {
    let mut body = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        let (&pad, after) = body
            .split_first()
            .ok_or_else(|| malformed("PADDED HEADERS without a pad length"))?;
        padding = usize::from(pad);
        body = after;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        if body.len() < 5 {
            return Err(malformed("HEADERS too short for its priority"));
        }
        let (p, after) = body.split_at(5);
        priority = Some(p.try_into().expect("split at 5"));
        body = after;
    }
    if padding > body.len() {
        return Err(malformed("HEADERS padding longer than the frame"));
    }
    Ok(PendingBlock {
        stream,
        end_stream: flags & END_STREAM != 0,
        priority,
        fragment: body[..body.len() - padding].to_vec(),
    })
}

/// Whether the server's HTTP stack accepts this `:authority` as it is.
fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A decoded header list.
    type Block = Vec<(Vec<u8>, Vec<u8>)>;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn request_headers(authority: &str) -> Block {
        [
            (":path", "/csi.v1.Identity/Probe"),
            (":authority", authority),
            (":method", "POST"),
            (":scheme", "http"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    /// Splits the server-side stream back into frames and decodes every header block.
    fn server_view(bytes: &[u8]) -> (Vec<(u8, u8, u32)>, Vec<Block>) {
        assert_eq!(&bytes[..PREFACE_LEN], PREFACE);
        let mut decoder = Decoder::new();
        let (mut frames, mut blocks, mut block) = (Vec::new(), Vec::new(), Vec::new());
        let mut rest = &bytes[PREFACE_LEN..];
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes(rest[5..9].try_into().unwrap());
            let payload = &rest[9..9 + len];
            frames.push((kind, flags, stream));
            if kind == HEADERS || kind == CONTINUATION {
                assert!(len <= MAX_FRAME_PAYLOAD);
                let skip = if kind == HEADERS && flags & PRIORITY != 0 {
                    5
                } else {
                    0
                };
                assert_eq!(flags & PADDED, 0, "the rewritten frames carry no padding");
                block.extend_from_slice(&payload[skip..]);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).expect("the server can decode it"));
                    block.clear();
                }
            }
            rest = &rest[9 + len..];
        }
        (frames, blocks)
    }

    fn authority(block: &[(Vec<u8>, Vec<u8>)]) -> String {
        let (_, v) = block.iter().find(|(n, _)| n == b":authority").unwrap();
        String::from_utf8(v.clone()).unwrap()
    }

    /// What gRPC core sends over a unix socket, encoded by a client-side encoder that uses its
    /// dynamic table, in two requests (the second refers back to the first).
    fn client_stream(authority: &str) -> Vec<u8> {
        let mut encoder = Encoder::new();
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let first = encoder.encode(
            request_headers(authority)
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice())),
        );
        out.extend(frame(HEADERS, END_HEADERS, 1, &first));
        out.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA: an empty gRPC message
        let second = encoder.encode(
            request_headers(authority)
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice())),
        );
        assert!(
            second.len() < first.len(),
            "the second block uses the dynamic table"
        );
        out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
        out
    }

    fn rewrite(bytes: &[u8], chunk: usize) -> Vec<u8> {
        let mut r = Rewriter::default();
        for piece in bytes.chunks(chunk) {
            r.feed(piece).unwrap();
        }
        assert!(
            r.input.is_empty() && r.block.is_none(),
            "everything was consumed"
        );
        r.output
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let input = client_stream("tmp%2Fcsi.sock");
        // Fed whole and one byte at a time, the server sees the same.
        let out = rewrite(&input, input.len());
        assert_eq!(out, rewrite(&input, 1));
        let (frames, blocks) = server_view(&out);
        assert_eq!(
            frames,
            [
                (0x4, 0, 0),
                (HEADERS, END_HEADERS, 1),
                (0x0, END_STREAM, 1),
                (HEADERS, END_HEADERS | END_STREAM, 3)
            ]
        );
        for block in &blocks {
            assert_eq!(authority(block), "localhost");
            let mut expected = request_headers("localhost");
            let mut got = block.clone();
            expected.sort();
            got.sort();
            assert_eq!(got, expected);
        }
        // The server's stack would have refused what the client sent.
        assert!(!is_valid_authority(b"tmp%2Fcsi.sock"));
        assert!(!is_valid_authority(b"/run/csi/csi.sock"));
    }

    #[test]
    fn a_valid_authority_is_left_alone() {
        let (_, blocks) = server_view(&rewrite(&client_stream("localhost:50051"), 7));
        assert!(blocks.iter().all(|b| authority(b) == "localhost:50051"));
    }

    #[test]
    fn padded_prioritised_and_continued_blocks_are_reassembled() {
        let mut encoder = Encoder::new();
        let block = encoder.encode(
            request_headers("/run/csi/csi.sock")
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice())),
        );
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 0, 15]); // exclusive dependency on 0, weight 16
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, b));
        let out = rewrite(&input, 3);
        let (frames, blocks) = server_view(&out);
        assert_eq!(frames, [(HEADERS, PRIORITY | END_STREAM | END_HEADERS, 5)]);
        assert_eq!(
            &out[PREFACE_LEN + 9..PREFACE_LEN + 14],
            &[0x80, 0, 0, 0, 15]
        );
        assert_eq!(authority(&blocks[0]), "localhost");
    }

    #[test]
    fn oversized_frames_and_tables_are_refused() {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0x00, 0x40, 0x01, HEADERS, END_HEADERS, 0, 0, 0, 1]);
        // Refused at the frame header, before 16 KiB of payload is waited for and buffered.
        assert!(Rewriter::default().feed(&input).is_err());
        // A dynamic table size update to 1 MiB (0x3f then the 5-bit prefix integer).
        let mut update = vec![0x3f];
        let mut rest = (1usize << 20) - 31;
        while rest >= 128 {
            update.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        update.push(rest as u8);
        update.push(0x82); // then a header (:method GET): a block may not end on an update
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &update));
        assert!(Rewriter::default().feed(&input).is_err());
    }

    #[test]
    fn broken_framing_is_an_error_not_a_panic() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b"x"));
        assert!(Rewriter::default().feed(&input).is_err());
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 1, 2]));
        assert!(Rewriter::default().feed(&input).is_err());
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]));
        assert!(Rewriter::default().feed(&input).is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn header() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
            (
                "[a-z][a-z0-9-]{0,20}",
                proptest::collection::vec(any::<u8>(), 0..40),
            )
                .prop_map(|(n, v)| (n.into_bytes(), v))
        }

        proptest! {
            /// Whatever a client sends after the preface, the rewriter answers with output or
            /// an error, never a panic: every byte of the socket reaches it. Raw bytes, and
            /// well-framed frames of every type with arbitrary flags and payloads (which reach
            /// the padding, priority and HPACK paths that random bytes rarely do).
            #[test]
            fn arbitrary_bytes_never_panic(
                raw in proptest::collection::vec(any::<u8>(), 0..512),
                frames in proptest::collection::vec(
                    (
                        prop_oneof![Just(HEADERS), Just(CONTINUATION), Just(0u8), Just(4u8), any::<u8>()],
                        any::<u8>(),
                        0u32..4,
                        proptest::collection::vec(any::<u8>(), 0..48),
                    ),
                    0..6,
                ),
                chunk in 1usize..64,
            ) {
                let mut input = PREFACE.to_vec();
                for (kind, flags, stream, payload) in frames {
                    input.extend(frame(kind, flags, stream, &payload));
                }
                input.extend(raw);
                let mut r = Rewriter::default();
                for piece in input.chunks(chunk) {
                    if r.feed(piece).is_err() {
                        break;
                    }
                }
            }

            /// Any header list, in several blocks that refer back to each other, split into
            /// arbitrary reads: the server decodes exactly what was sent, with an authority it
            /// would have refused replaced and any other left alone.
            #[test]
            fn headers_survive_and_only_a_refused_authority_changes(
                authority in proptest::collection::vec(any::<u8>(), 0..30),
                extra in proptest::collection::vec(header(), 0..8),
                blocks in 1usize..4,
                chunk in 1usize..50,
            ) {
                let mut sent: Block = vec![
                    (b":method".to_vec(), b"POST".to_vec()),
                    (b":authority".to_vec(), authority.clone()),
                ];
                sent.extend(extra);
                let mut encoder = Encoder::new();
                let mut input = PREFACE.to_vec();
                for i in 0..blocks {
                    let block = encoder.encode(sent.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
                    input.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i as u32, &block));
                }
                let (_, got) = server_view(&rewrite(&input, chunk));
                prop_assert_eq!(got.len(), blocks);
                let expected_authority = if is_valid_authority(&authority) {
                    authority
                } else {
                    FALLBACK_AUTHORITY.to_vec()
                };
                for block in got {
                    let mut want = sent.clone();
                    want[1].1 = expected_authority.clone();
                    prop_assert_eq!(block, want);
                }
            }
        }
    }
}
