//! An answer far larger than any the real services send, streamed without a
//! `Content-Length` so that the client cannot refuse it up front and must
//! count what it reads. Nothing of it is held in memory here.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use http_body::Frame;

/// JSON whitespace, sent in chunks of this size.
static SPACES: [u8; 64 * 1024] = [b' '; 64 * 1024];

/// A body of `left` spaces.
struct Spaces {
    left: u64,
}

impl http_body::Body for Spaces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(SPACES.len());
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&SPACES[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

/// `200 OK`, `application/json`, `bytes` of whitespace, chunked.
pub(crate) fn oversized(bytes: u64) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::new(Spaces { left: bytes }),
    )
        .into_response()
}
