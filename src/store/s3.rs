//! A store in an S3 bucket (AWS S3, MinIO, Garage, Ceph RGW) through `aws-sdk-s3`.
//!
//! Configuration comes from the standard AWS environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` for temporary keys, `AWS_REGION`,
//! `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`). With a custom endpoint, requests use path-style addressing. Only the S3 API that both AWS and the
//! S3-compatible servers speak is used; checksums are sent only where a request requires them
//! (newer SDK defaults break several S3-compatible servers), and single PUTs carry Content-MD5.
//! A PUT is create-only: a HEAD first, and `If-None-Match: *` for servers that enforce it.
//! The SDK's own retries are off: [`super::retry::Retry`] retries, and every call here is bounded
//! by the timeout in [`StoreOptions`] and the caller's cancellation token.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use base64::Engine;
use bytes::Bytes;
use md5::{Digest, Md5};
use tokio_util::sync::CancellationToken;

use super::{bounded, check_key, ObjectInfo, Store, StoreError, StoreOptions};

/// Explicit connection settings; [`S3Store::from_env`] fills them from the AWS environment.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// The session token of temporary credentials (STS, `aws sts assume-role`, SSO): sent as
    /// `x-amz-security-token` with every request; without it such keys are refused.
    pub session_token: Option<String>,
}

impl S3Settings {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        S3Settings {
            endpoint: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    options: StoreOptions,
}

impl S3Store {
    pub async fn from_env(
        bucket: &str,
        prefix: &str,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::new(bucket, prefix, S3Settings::from_env(), options).await
    }

    pub async fn new(
        bucket: &str,
        prefix: &str,
        settings: S3Settings,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        // No region in the environment: S3-compatible servers accept any, AWS redirects. Never
        // let the SDK probe instance metadata, which hangs off-cloud.
        let region = settings
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".into());
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).region(Region::new(region));
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            let token = settings.session_token.clone();
            loader =
                loader.credentials_provider(Credentials::new(id, secret, token, None, "lifeboat"));
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .retry_config(RetryConfig::disabled())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &settings.endpoint {
            b = b.endpoint_url(endpoint).force_path_style(true);
        }
        let prefix = prefix.trim_matches('/');
        Ok(S3Store {
            client: Client::from_conf(b.build()),
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            options,
        })
    }

    fn full(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    fn timeout(&self) -> Duration {
        self.options.op_timeout
    }

    async fn multipart_put(&self, key: &str, full: &str, data: Bytes) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| map_err("put", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            let part_size = self.options.multipart_part_size.max(5 << 20) as usize;
            for (i, chunk) in data.chunks(part_size).enumerate() {
                let n = i as i32 + 1;
                let body = data.slice_ref(chunk);
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&upload_id)
                    .part_number(n)
                    .content_md5(md5_b64(&body))
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| map_err("put", key, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                );
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .if_none_match("*")
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| map_err("put", key, e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

fn md5_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(data))
}

fn map_err<E>(op: &'static str, key: &str, e: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let key = key.to_string();
    let transient = |message: String| StoreError::Transient {
        op,
        key: key.clone(),
        message,
    };
    match &e {
        _ if credentials_missing(&e) => StoreError::Credentials {
            problem: format!("{op} `{key}`: no S3 credentials were found"),
            fix: MISSING_CREDENTIALS_FIX,
        },
        SdkError::DispatchFailure(d) => transient(match d.as_connector_error() {
            Some(c) if c.is_timeout() => format!("the S3 endpoint timed out: {}", root_cause(&e)),
            Some(c) if c.is_io() => format!("the S3 endpoint is unreachable: {}", root_cause(&e)),
            _ => root_cause(&e),
        }),
        SdkError::TimeoutError(_) => transient("the S3 call timed out".into()),
        SdkError::ResponseError(_) => transient(format!(
            "the S3 endpoint's response could not be read: {}",
            root_cause(&e)
        )),
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = e.code().unwrap_or("").to_string();
            let message = format!(
                "HTTP {status}{}{}",
                if code.is_empty() {
                    String::new()
                } else {
                    format!(" {code}")
                },
                e.message().map(|m| format!(": {m}")).unwrap_or_default()
            );
            match status {
                // Wrong keys (AWS, MinIO: InvalidAccessKeyId; Garage: AccessDenied "No such
                // key") or a key without access to the bucket: configuration, not retried.
                // A key that reads but may not write (Garage: AccessDenied "Operation is
                // forbidden for this key"; AWS, MinIO: AccessDenied).
                403 if matches!(op, "put" | "delete")
                    && !REJECTED_CREDENTIALS.contains(&code.as_str())
                    && !message.contains("No such key") =>
                {
                    StoreError::WriteDenied { op, key, message }
                }
                _ if status == 403 || REJECTED_CREDENTIALS.contains(&code.as_str()) => {
                    StoreError::Credentials {
                        problem: format!(
                            "{op} `{key}`: the S3 server rejected the credentials ({message})"
                        ),
                        fix: REJECTED_CREDENTIALS_FIX,
                    }
                }
                404 => StoreError::NotFound { key },
                412 => StoreError::AlreadyExists { key },
                408 | 409 | 429 | 500 | 502 | 503 | 504 => transient(message),
                _ if code == "SlowDown" || code == "RequestTimeout" || code == "InternalError" => {
                    transient(message)
                }
                _ => StoreError::Permanent { op, key, message },
            }
        }
        _ => StoreError::Permanent {
            op,
            key,
            message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
        },
    }
}

const MISSING_CREDENTIALS_FIX: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in a \
     cluster: the keys of the repository Secret), or AWS_PROFILE, a web identity token or an \
     instance role";
const REJECTED_CREDENTIALS_FIX: &str = "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in a \
     cluster: the keys of the repository Secret), AWS_SESSION_TOKEN for temporary keys (they \
     expire), and that the key may use this bucket";
/// S3 error codes that mean the credentials are wrong, not the request.
const REJECTED_CREDENTIALS: [&str; 4] = [
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
];

/// Whether the SDK gave up before sending because no credential provider had any.
fn credentials_missing<E: std::error::Error + 'static>(e: &SdkError<E, HttpResponse>) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
            .is_some()
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The innermost cause of an SDK error, e.g. `Connection refused (os error 111)`: the chain
/// above it repeats the same failure in SDK terms.
fn root_cause<E: std::error::Error + 'static>(e: &SdkError<E, HttpResponse>) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[async_trait]
impl Store for S3Store {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }

    async fn put(
        &self,
        key: &str,
        data: Bytes,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let full = self.full(key)?;
        // `If-None-Match: *` makes the PUT create-only where the server honours it (AWS, MinIO);
        // some S3-compatible servers (Garage 2.x) ignore it, so ask first. The window between
        // the two only matters for identical bytes: every key but `config` is content-addressed.
        if self.head(key, cancel).await?.is_some() {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        // Multipart moves more bytes per call: give it time in proportion.
        let parts = data.len() as u64 / self.options.multipart_part_size.max(1) + 1;
        if data.len() as u64 >= self.options.multipart_threshold {
            return bounded(
                "put",
                key,
                self.timeout() * parts as u32,
                cancel,
                self.multipart_put(key, &full, data),
            )
            .await;
        }
        bounded("put", key, self.timeout(), cancel, async {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .if_none_match("*")
                .content_md5(md5_b64(&data))
                .body(ByteStream::from(data.clone()))
                .send()
                .await
                .map_err(|e| map_err("put", key, e))?;
            Ok(())
        })
        .await
    }

    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<Bytes, StoreError> {
        let full = self.full(key)?;
        bounded("get", key, self.timeout(), cancel, async {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| map_err("get", key, e))?;
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| StoreError::Transient {
                    op: "get",
                    key: key.to_string(),
                    message: e.to_string(),
                })?;
            Ok(body.into_bytes())
        })
        .await
    }

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
        cancel: &CancellationToken,
    ) -> Result<Bytes, StoreError> {
        let full = self.full(key)?;
        if length == 0 {
            return Ok(Bytes::new());
        }
        bounded("get_range", key, self.timeout(), cancel, async {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&full)
                .range(format!("bytes={}-{}", offset, offset + length - 1))
                .send()
                .await;
            let out = match out {
                Ok(o) => o,
                Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 416 => {
                    return Ok(Bytes::new())
                }
                Err(e) => return Err(map_err("get_range", key, e)),
            };
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| StoreError::Transient {
                    op: "get_range",
                    key: key.to_string(),
                    message: e.to_string(),
                })?;
            Ok(body.into_bytes())
        })
        .await
    }

    async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Option<u64>, StoreError> {
        let full = self.full(key)?;
        bounded("head", key, self.timeout(), cancel, async {
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
            {
                Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
                Err(e) => match map_err("head", key, e) {
                    StoreError::NotFound { .. } => Ok(None),
                    e => Err(e),
                },
            }
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        bounded("list", prefix, self.timeout(), cancel, async {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&full_prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| map_err("list", prefix, e))?;
                for o in page.contents() {
                    if let Some(k) = o.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                        out.push(ObjectInfo {
                            key: k.to_string(),
                            size: o.size().unwrap_or(0).max(0) as u64,
                        });
                    }
                }
                match page.next_continuation_token() {
                    Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), StoreError> {
        let full = self.full(key)?;
        bounded("delete", key, self.timeout(), cancel, async {
            match self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => match map_err("delete", key, e) {
                    StoreError::NotFound { .. } => Ok(()),
                    e => Err(e),
                },
            }
        })
        .await
    }
}
