//! Keyset pagination with opaque, signed page tokens. A token names the last item of the page
//! it ends and the list it belongs to, under the instance key, so a client can neither forge a
//! position nor carry a token over to another list.

use super::error::{Error, Result};
use super::secret::Keyring;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use uuid::Uuid;

const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 100;
const PURPOSE: &str = "page-token";
const TAG_LENGTH: usize = 16;

/// Where a page starts and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Items strictly after this id (lists are ordered by id).
    pub after: Option<Uuid>,
    pub size: usize,
}

impl PageRequest {
    /// The number of rows to fetch: one more than the page, to learn whether another follows.
    pub fn fetch_limit(&self) -> usize {
        self.size + 1
    }
}

pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

pub struct PageTokens {
    keyring: Arc<dyn Keyring>,
}

fn invalid_token() -> Error {
    Error::invalid_argument(
        "INVALID_PAGE_TOKEN",
        "page_token is not a token this list answered; start again without it",
    )
}

impl PageTokens {
    pub fn new(keyring: Arc<dyn Keyring>) -> Self {
        Self { keyring }
    }

    fn tag(&self, list: &str, after: Uuid) -> [u8; 32] {
        let mut data = Vec::with_capacity(list.len() + 17);
        data.extend_from_slice(list.as_bytes());
        data.push(0);
        data.extend_from_slice(after.as_bytes());
        self.keyring.mac(PURPOSE, &data)
    }

    /// Reads `page_size` (0 for the default, at most 100) and `page_token` of the list `list`.
    pub fn request(&self, list: &str, page_size: i32, page_token: &str) -> Result<PageRequest> {
        let size = match usize::try_from(page_size) {
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) => size.min(MAX_PAGE_SIZE),
            Err(_) => {
                return Err(Error::invalid_argument(
                    "INVALID_PAGE_SIZE",
                    "page_size must not be negative",
                ));
            }
        };
        if page_token.is_empty() {
            return Ok(PageRequest { after: None, size });
        }
        let raw = URL_SAFE_NO_PAD
            .decode(page_token)
            .map_err(|_| invalid_token())?;
        if raw.len() != 16 + TAG_LENGTH {
            return Err(invalid_token());
        }
        let (id, tag) = raw.split_at(16);
        let after = Uuid::from_slice(id).map_err(|_| invalid_token())?;
        if !bool::from(self.tag(list, after)[..TAG_LENGTH].ct_eq(tag)) {
            return Err(invalid_token());
        }
        Ok(PageRequest {
            after: Some(after),
            size,
        })
    }

    /// Cuts `rows` (fetched with `fetch_limit`) to the page and signs the token of the next.
    pub fn page<T>(
        &self,
        list: &str,
        request: PageRequest,
        mut rows: Vec<T>,
        id_of: impl Fn(&T) -> Uuid,
    ) -> Page<T> {
        let next_page_token = if rows.len() > request.size {
            rows.truncate(request.size);
            rows.last().map_or_else(String::new, |last| {
                let id = id_of(last);
                let mut raw = id.as_bytes().to_vec();
                raw.extend_from_slice(&self.tag(list, id)[..TAG_LENGTH]);
                URL_SAFE_NO_PAD.encode(raw)
            })
        } else {
            String::new()
        };
        Page {
            items: rows,
            next_page_token,
        }
    }
}
