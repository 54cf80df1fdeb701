//! `keel.file.v1.FileService`.

use super::{id, principal, time, timestamp};
use crate::api::pb::keel::file::v1::file_service_server::FileService as FileRpc;
use crate::api::pb::keel::file::v1::*;
use crate::domain::files::{ByteStream, FileFilter, FileService, StoredFile, UploadHeader};
use crate::domain::{Error, ErrorKind};
use futures_util::stream::{self, Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

pub struct FileApi {
    files: Arc<FileService>,
    /// How long an upload may go without a chunk before it is abandoned.
    chunk_wait: Duration,
}

impl FileApi {
    pub fn new(files: Arc<FileService>, chunk_wait: Duration) -> Self {
        Self { files, chunk_wait }
    }
}

fn file_to_proto(file: StoredFile) -> File {
    File {
        id: file.id.to_string(),
        filename: file.filename,
        original_filename: file.original_filename,
        content_type: file.content_type,
        size: file.size,
        checksum: file.checksum,
        storage_provider: file.storage_provider,
        organization_id: file
            .organization_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        uploaded_by: file.uploaded_by.to_string(),
        description: file.description,
        created_at: Some(timestamp(file.created_at)),
    }
}

fn header_required() -> Error {
    Error::invalid_argument(
        "HEADER_REQUIRED",
        "the first message of an upload carries its header, and only the first",
    )
}

/// The chunks after the header, each within `wait` of the last.
fn chunks(messages: Streaming<UploadFileRequest>, wait: Duration) -> ByteStream {
    stream::unfold(Some(messages), move |messages| async move {
        let mut messages = messages?;
        let next = match tokio::time::timeout(wait, messages.next()).await {
            Err(_) => Err(Error::invalid_argument(
                "UPLOAD_STALLED",
                format!("no bytes arrived for {} s", wait.as_secs()),
            )),
            Ok(None) => return None,
            Ok(Some(Err(status))) => Err(Error::new(
                ErrorKind::InvalidArgument,
                "UPLOAD_INTERRUPTED",
                format!("the upload stream broke: {}", status.message()),
            )),
            Ok(Some(Ok(message))) => match message.part {
                Some(upload_file_request::Part::Chunk(chunk)) => Ok(chunk),
                _ => Err(header_required()),
            },
        };
        let failed = next.is_err();
        Some((next, (!failed).then_some(messages)))
    })
    .boxed()
}

type Parts = Pin<Box<dyn Stream<Item = Result<DownloadFileResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FileRpc for FileApi {
    async fn upload_file(
        &self,
        request: Request<Streaming<UploadFileRequest>>,
    ) -> Result<Response<UploadFileResponse>, Status> {
        let principal = principal(&request)?;
        let mut messages = request.into_inner();
        let Some(UploadFileRequest {
            part: Some(upload_file_request::Part::Header(header)),
        }) = messages.message().await?
        else {
            return Err(header_required().into());
        };
        let organization_id = match header.organization_id.as_str() {
            "" => None,
            raw => Some(id("header.organization_id", raw)?),
        };
        let header = UploadHeader {
            filename: header.filename,
            organization_id,
            description: header.description,
            declared_type: Some(header.content_type).filter(|kind| !kind.is_empty()),
            checksum: Some(header.checksum).filter(|checksum| !checksum.is_empty()),
        };
        let file = self
            .files
            .upload(&principal, header, chunks(messages, self.chunk_wait))
            .await?;
        Ok(Response::new(UploadFileResponse {
            file: Some(file_to_proto(file)),
        }))
    }

    async fn list_files(
        &self,
        request: Request<ListFilesRequest>,
    ) -> Result<Response<ListFilesResponse>, Status> {
        let principal = principal(&request)?;
        let body = request.into_inner();
        let filter = FileFilter {
            organization_id: match body.organization_id.as_str() {
                "" => None,
                raw => Some(id("organization_id", raw)?),
            },
            uploaded_by: None,
            content_type: Some(body.content_type.trim().to_ascii_lowercase())
                .filter(|kind| !kind.is_empty()),
            created_after: time("created_after", body.created_after)?,
            created_before: time("created_before", body.created_before)?,
        };
        let page = self
            .files
            .list(&principal, filter, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListFilesResponse {
            files: page.items.into_iter().map(file_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_file(
        &self,
        request: Request<GetFileRequest>,
    ) -> Result<Response<GetFileResponse>, Status> {
        let principal = principal(&request)?;
        let file_id = id("file_id", &request.get_ref().file_id)?;
        let file = self.files.get(&principal, file_id).await?;
        Ok(Response::new(GetFileResponse {
            file: Some(file_to_proto(file)),
        }))
    }

    async fn delete_file(
        &self,
        request: Request<DeleteFileRequest>,
    ) -> Result<Response<DeleteFileResponse>, Status> {
        let principal = principal(&request)?;
        let file_id = id("file_id", &request.get_ref().file_id)?;
        self.files.delete(&principal, file_id).await?;
        Ok(Response::new(DeleteFileResponse {}))
    }

    async fn get_download_url(
        &self,
        request: Request<GetDownloadUrlRequest>,
    ) -> Result<Response<GetDownloadUrlResponse>, Status> {
        let principal = principal(&request)?;
        let body = request.get_ref();
        let file_id = id("file_id", &body.file_id)?;
        let (download_url, expires_in) = self
            .files
            .download_url(
                &principal,
                file_id,
                body.expires_in,
                body.inline,
                &body.thumb,
            )
            .await?;
        Ok(Response::new(GetDownloadUrlResponse {
            download_url,
            expires_in,
        }))
    }

    type DownloadFileStream = Parts;

    async fn download_file(
        &self,
        request: Request<DownloadFileRequest>,
    ) -> Result<Response<Parts>, Status> {
        let principal = principal(&request)?;
        let file_id = id("file_id", &request.get_ref().file_id)?;
        let download = self.files.download(&principal, file_id).await?;
        let bytes = self.files.bytes(&download, 0, None).await?;
        let first = DownloadFileResponse {
            part: Some(download_file_response::Part::File(file_to_proto(
                download.file,
            ))),
        };
        let chunks = bytes.map(|chunk| {
            chunk
                .map(|chunk| DownloadFileResponse {
                    part: Some(download_file_response::Part::Chunk(chunk)),
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(
            stream::once(async move { Ok(first) }).chain(chunks),
        )))
    }
}
