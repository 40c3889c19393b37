//! Snapshot files, written and read as streams: the whole state is never in memory.
//!
//! Layout (format 3): `MAGIC` (8 bytes) | uncompressed length (u64 LE) | header length (u32
//! LE) | header (a prost [`SnapshotRecord`] without entries: schema, last log id,
//! membership, snapshot id) | one zstd frame holding records and trailer. A record is
//! `1 | varint shared | varint suffix length | suffix | varint value length | value`, where
//! `shared` is the length of the prefix the key shares with the previous key (keys are
//! written in sorted order). The trailer is `0 | entry count (u64 LE) | uncompressed length
//! (u64 LE) | CRC-32 (u32 LE)`; the checksum covers every uncompressed byte before it but
//! the length field after the magic, which is written last (it is only known then) and must
//! equal the trailer's. The uncompressed length (every byte as format 2 would have taken,
//! plus that field) measures the live data for [`live_bytes`]. A reader checks count,
//! length and checksum when it reaches the trailer, so a truncated or damaged file is
//! refused before anything is switched to it.
//!
//! Format 2 ([`MAGIC_V2`], written before snapshots were compressed, by nodes and backups)
//! is the same without the length field, uncompressed, with a trailer of count and CRC-32
//! only; it is still read.
//!
//! [`SnapshotFile`] is openraft's `SnapshotData`: a file that is read chunk by chunk when
//! sent, and written chunk by chunk when received.

use std::future::Future;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prost::Message;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

use crate::proto::internal::SnapshotRecord;

/// The first bytes of a snapshot file in this format.
pub const MAGIC: &[u8; 8] = b"SDSNAP03";
/// The first bytes of a snapshot file in format 2 (uncompressed).
pub const MAGIC_V2: &[u8; 8] = b"SDSNAP02";
/// Largest accepted header (a membership and a few ids).
const MAX_HEADER_BYTES: u32 = 1024 * 1024;
/// Largest accepted key or value.
const MAX_FIELD_BYTES: u64 = 64 * 1024 * 1024;
const IO_BUFFER_BYTES: usize = 1024 * 1024;
/// Decompressed bytes buffered ahead of the record reader.
const DECODED_BUFFER_BYTES: usize = 64 * 1024;
/// zstd's level for snapshot bodies: its fastest regular level (a build competes with
/// applies for the CPU). On 100k sessions it takes 35 % off; level 3 takes 4 % more for
/// 2.4 times the CPU (hashes, random ids and sealed tokens do not compress).
const COMPRESSION_LEVEL: i32 = 1;
/// Where the uncompressed length is, after the magic.
const LENGTH_AT: u64 = 8;
const RECORD: u8 = 1;
const TRAILER: u8 = 0;
/// Bytes of a format-3 trailer: tag, count, length, checksum.
const TRAILER_BYTES: u64 = 1 + 8 + 8 + 4;

fn corrupt(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Writes a snapshot file entry by entry; [`SnapshotWriter::finish`] makes it durable.
pub struct SnapshotWriter {
    out: zstd::stream::write::Encoder<'static, BufWriter<std::fs::File>>,
    crc: crc32fast::Hasher,
    uncompressed: u64,
    previous: Vec<u8>,
    count: u64,
    scratch: Vec<u8>,
}

impl SnapshotWriter {
    /// Creates (truncating) `path` and writes the header: `header` must have no entries.
    pub fn create(path: &Path, header: &SnapshotRecord) -> io::Result<Self> {
        debug_assert!(header.entries.is_empty());
        let file = std::fs::File::create(path)?;
        let mut out = BufWriter::with_capacity(IO_BUFFER_BYTES, file);
        let header = header.encode_to_vec();
        let mut crc = crc32fast::Hasher::new();
        crc.update(MAGIC);
        let mut uncompressed = LENGTH_AT + 8;
        out.write_all(MAGIC)?;
        out.write_all(&0u64.to_le_bytes())?;
        for part in [&(header.len() as u32).to_le_bytes()[..], &header] {
            out.write_all(part)?;
            uncompressed += part.len() as u64;
            crc.update(part);
        }
        Ok(SnapshotWriter {
            out: zstd::stream::write::Encoder::new(out, COMPRESSION_LEVEL)?,
            crc,
            uncompressed,
            previous: Vec::new(),
            count: 0,
            scratch: Vec::new(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.uncompressed += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    /// Appends one entry; keys must come in strictly increasing order.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        debug_assert!(self.count == 0 || key > self.previous.as_slice());
        let shared = key
            .iter()
            .zip(&self.previous)
            .take_while(|(a, b)| a == b)
            .count();
        let mut record = std::mem::take(&mut self.scratch);
        record.clear();
        record.push(RECORD);
        prost::encoding::encode_varint(shared as u64, &mut record);
        prost::encoding::encode_varint((key.len() - shared) as u64, &mut record);
        record.extend_from_slice(&key[shared..]);
        prost::encoding::encode_varint(value.len() as u64, &mut record);
        record.extend_from_slice(value);
        let written = self.write(&record);
        self.scratch = record;
        written?;
        self.previous.clear();
        self.previous.extend_from_slice(key);
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer and the uncompressed length, syncs the file and returns the
    /// number of entries.
    pub fn finish(mut self) -> io::Result<u64> {
        let uncompressed = self.uncompressed + TRAILER_BYTES;
        self.write(&[TRAILER])?;
        let count = self.count.to_le_bytes();
        self.write(&count)?;
        self.write(&uncompressed.to_le_bytes())?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        let mut file = self
            .out
            .finish()?
            .into_inner()
            .map_err(|e| e.into_error())?;
        file.seek(io::SeekFrom::Start(LENGTH_AT))?;
        file.write_all(&uncompressed.to_le_bytes())?;
        file.sync_all()?;
        Ok(self.count)
    }
}

/// A snapshot file's body: compressed (format 3) or not (format 2). Both are buffered: a
/// record is read a few bytes at a time.
enum Body {
    Compressed(BufReader<zstd::stream::read::Decoder<'static, BufReader<std::fs::File>>>),
    Plain(BufReader<std::fs::File>),
}

/// Reads a snapshot file entry by entry, checking count and checksum at the end.
pub struct SnapshotReader {
    body: Body,
    crc: crc32fast::Hasher,
    header: SnapshotRecord,
    /// The uncompressed length after the magic (format 3).
    uncompressed: Option<u64>,
    key: Vec<u8>,
    count: u64,
    finished: bool,
}

/// Reads exactly `buf` from `input` into the checksum, a short read being a truncated file.
fn read_checked(
    input: &mut impl Read,
    crc: &mut crc32fast::Hasher,
    buf: &mut [u8],
) -> io::Result<()> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt("snapshot file is truncated"),
        _ => e,
    })?;
    crc.update(buf);
    Ok(())
}

impl SnapshotReader {
    /// Opens `path` and reads its header. Fails with `InvalidData` if the file is not a
    /// snapshot in this format or in format 2.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::from_file(std::fs::File::open(path)?)
    }

    /// Reads the snapshot in `file` from its current position (its start).
    pub fn from_file(file: std::fs::File) -> io::Result<Self> {
        let mut input = BufReader::with_capacity(IO_BUFFER_BYTES, file);
        let mut crc = crc32fast::Hasher::new();
        let mut magic = [0u8; 8];
        read_checked(&mut input, &mut crc, &mut magic)?;
        let uncompressed = match &magic {
            MAGIC => {
                let mut length = [0u8; 8];
                read_checked(&mut input, &mut crc32fast::Hasher::new(), &mut length)?;
                Some(u64::from_le_bytes(length))
            }
            MAGIC_V2 => None,
            _ => return Err(corrupt("not a snapshot file of a known format")),
        };
        let mut len = [0u8; 4];
        read_checked(&mut input, &mut crc, &mut len)?;
        let len = u32::from_le_bytes(len);
        if len > MAX_HEADER_BYTES {
            return Err(corrupt("snapshot header too large"));
        }
        let mut header = vec![0u8; len as usize];
        read_checked(&mut input, &mut crc, &mut header)?;
        let header = SnapshotRecord::decode(header.as_slice())
            .map_err(|e| corrupt(format!("snapshot header: {e}")))?;
        let body = match uncompressed {
            Some(_) => Body::Compressed(BufReader::with_capacity(
                DECODED_BUFFER_BYTES,
                zstd::stream::read::Decoder::with_buffer(input)?.single_frame(),
            )),
            None => Body::Plain(input),
        };
        Ok(SnapshotReader {
            body,
            crc,
            header,
            uncompressed,
            key: Vec::new(),
            count: 0,
            finished: false,
        })
    }

    /// The header: the snapshot's metadata, without entries.
    pub fn header(&self) -> &SnapshotRecord {
        &self.header
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match &mut self.body {
            Body::Plain(input) => read_checked(input, &mut self.crc, buf),
            // The decoder reports damaged data as a plain I/O error.
            Body::Compressed(input) => {
                read_checked(input, &mut self.crc, buf).map_err(|e| match e.kind() {
                    io::ErrorKind::InvalidData => e,
                    _ => corrupt(format!("snapshot body: {e}")),
                })
            }
        }
    }

    fn read_varint(&mut self) -> io::Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let mut byte = [0u8; 1];
            self.read_exact(&mut byte)?;
            value |= u64::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(corrupt("bad varint in snapshot"))
    }

    fn read_field(&mut self, into: &mut Vec<u8>) -> io::Result<()> {
        let len = self.read_varint()?;
        if len > MAX_FIELD_BYTES {
            return Err(corrupt("snapshot field too large"));
        }
        let start = into.len();
        into.resize(start + len as usize, 0);
        let mut field = std::mem::take(into);
        let read = self.read_exact(&mut field[start..]);
        *into = field;
        read
    }

    /// The next entry, or `None` after the last one once count and checksum matched.
    pub fn next_entry(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.finished {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.read_exact(&mut tag)?;
        match tag[0] {
            RECORD => {
                let shared = self.read_varint()?;
                if shared > self.key.len() as u64 {
                    return Err(corrupt("bad key prefix in snapshot"));
                }
                let mut key = std::mem::take(&mut self.key);
                key.truncate(shared as usize);
                let read = self.read_field(&mut key);
                self.key = key;
                read?;
                let mut value = Vec::new();
                self.read_field(&mut value)?;
                self.count += 1;
                Ok(Some((self.key.clone(), value)))
            }
            TRAILER => {
                let mut count = [0u8; 8];
                self.read_exact(&mut count)?;
                let mut length = [0u8; 8];
                if self.uncompressed.is_some() {
                    self.read_exact(&mut length)?;
                }
                let expected = self.crc.clone().finalize();
                let mut crc = [0u8; 4];
                read_checked(&mut self.body, &mut crc32fast::Hasher::new(), &mut crc)?;
                if u64::from_le_bytes(count) != self.count {
                    return Err(corrupt("snapshot entry count does not match"));
                }
                if u32::from_le_bytes(crc) != expected {
                    return Err(corrupt("snapshot checksum does not match"));
                }
                if self
                    .uncompressed
                    .is_some_and(|at_start| at_start != u64::from_le_bytes(length))
                {
                    return Err(corrupt("snapshot length does not match"));
                }
                self.finished = true;
                Ok(None)
            }
            _ => Err(corrupt("bad record tag in snapshot")),
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Compressed(input) => input.read(buf),
            Body::Plain(input) => input.read(buf),
        }
    }
}

/// The header of the snapshot file at `path`: `None` if there is no file, `InvalidData` if
/// it is not in this format.
pub fn read_header(path: &Path) -> io::Result<Option<SnapshotRecord>> {
    match SnapshotReader::open(path) {
        Ok(reader) => Ok(Some(reader.header)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the file at `path` starts with the magic of this format or of format 2.
pub fn has_magic(path: &Path) -> io::Result<bool> {
    let mut magic = [0u8; 8];
    let mut file = std::fs::File::open(path)?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == MAGIC || &magic == MAGIC_V2),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The uncompressed length of the snapshot file at `path` (its size for format 2): the
/// live data, compactly encoded, that the state database's files are compared with.
pub fn live_bytes(path: &Path) -> io::Result<u64> {
    let mut start = [0u8; 16];
    let mut file = std::fs::File::open(path)?;
    file.read_exact(&mut start)?;
    match &start[..8] {
        m if m == MAGIC => Ok(u64::from_le_bytes(start[8..].try_into().expect("8 bytes"))),
        m if m == MAGIC_V2 => Ok(file.metadata()?.len()),
        _ => Err(corrupt("not a snapshot file of a known format")),
    }
}

/// Syncs a directory, so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// openraft's snapshot data: a snapshot file, streamed in both directions.
///
/// A file being received is written at a temporary path; when openraft shuts the writer
/// down (the last chunk arrived), it is synced and renamed to its final path, so that a
/// completely received snapshot survives a crash before it is installed.
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
    complete_at: Option<PathBuf>,
    completing: Option<JoinHandle<io::Result<()>>>,
}

impl SnapshotFile {
    /// The snapshot in the open `file`, at `path`, for reading.
    pub fn from_std(file: std::fs::File, path: &Path) -> Self {
        SnapshotFile {
            file: tokio::fs::File::from_std(file),
            path: path.to_path_buf(),
            complete_at: None,
            completing: None,
        }
    }

    /// A new, empty file at `path` to receive a snapshot into; once complete it is moved
    /// to `complete_at`.
    pub async fn receive(path: &Path, complete_at: &Path) -> io::Result<Self> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .await?;
        Ok(SnapshotFile {
            file,
            path: path.to_path_buf(),
            complete_at: Some(complete_at.to_path_buf()),
            completing: None,
        })
    }

    /// Where the file is now.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is a received snapshot that was completed (synced and renamed).
    pub fn is_completed_receive(&self) -> bool {
        self.complete_at.is_none() && self.completing.is_none()
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    /// Flushes; for a received file also syncs it and moves it to its final path.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.file).poll_flush(cx))?;
        if self.completing.is_none() {
            let Some(target) = self.complete_at.clone() else {
                return Poll::Ready(Ok(()));
            };
            let source = self.path.clone();
            self.completing = Some(tokio::task::spawn_blocking(move || {
                std::fs::File::open(&source)?.sync_all()?;
                std::fs::rename(&source, &target)?;
                sync_dir(target.parent().unwrap_or(Path::new(".")))
            }));
        }
        let Some(completing) = self.completing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let done = ready!(Pin::new(completing).poll(cx)).map_err(io::Error::other)?;
        self.completing = None;
        done?;
        if let Some(target) = self.complete_at.take() {
            self.path = target;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(index: u64) -> SnapshotRecord {
        SnapshotRecord {
            schema_version: 1,
            last_log_id: Some(crate::proto::internal::LogIdRecord {
                term: 2,
                node_id: 1,
                index,
            }),
            snapshot_id: format!("s-{index}"),
            ..Default::default()
        }
    }

    fn entries(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| {
                (
                    format!("u/tenant/user-{:06}", i).into_bytes(),
                    vec![(i % 251) as u8; i % 300],
                )
            })
            .collect()
    }

    fn write(path: &Path, entries: &[(Vec<u8>, Vec<u8>)]) {
        let mut w = SnapshotWriter::create(path, &header(7)).unwrap();
        for (k, v) in entries {
            w.push(k, v).unwrap();
        }
        assert_eq!(w.finish().unwrap(), entries.len() as u64);
    }

    fn read_all(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut r = SnapshotReader::open(path)?;
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn entries_round_trip_with_shared_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let written = entries(5_000);
        write(&path, &written);
        assert_eq!(read_header(&path).unwrap().unwrap(), header(7));
        assert_eq!(read_all(&path).unwrap(), written);
        let raw: usize = written.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!((std::fs::metadata(&path).unwrap().len() as usize) < raw / 4);
        assert!(read_header(&dir.path().join("none")).unwrap().is_none());
    }

    /// The length field counts every uncompressed byte: the part before the zstd frame
    /// and the frame's decompressed contents.
    #[test]
    fn live_bytes_is_the_uncompressed_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write(&path, &entries(2_000));
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
        let frame_at = 20 + header_len;
        let body = zstd::stream::decode_all(&bytes[frame_at..]).unwrap();
        let live = live_bytes(&path).unwrap();
        assert_eq!(live, (frame_at + body.len()) as u64);
        assert!(live > 4 * bytes.len() as u64);
    }

    /// A format-2 file (uncompressed, written before format 3: a kept backup) is still
    /// read, checked and measured.
    #[test]
    fn a_format_2_file_is_still_read() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshot-v2/backup.snap");
        assert!(has_magic(&fixture).unwrap());
        let header = read_header(&fixture).unwrap().unwrap();
        assert_eq!(header.snapshot_id, "4-900-1");
        let read = read_all(&fixture).unwrap();
        assert_eq!(read.len(), 29);
        assert!(read.windows(2).all(|pair| pair[0].0 < pair[1].0));
        assert_eq!(
            live_bytes(&fixture).unwrap(),
            std::fs::metadata(&fixture).unwrap().len()
        );

        let dir = tempfile::tempdir().unwrap();
        let damaged = dir.path().join("damaged.snap");
        let mut bytes = std::fs::read(&fixture).unwrap();
        let at = bytes.len() - 30;
        bytes[at] ^= 0x01;
        std::fs::write(&damaged, &bytes).unwrap();
        assert!(read_all(&damaged).is_err());
    }

    #[test]
    fn a_damaged_or_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write(&path, &entries(300));
        let bytes = std::fs::read(&path).unwrap();
        for cut in [bytes.len() - 1, bytes.len() - 5, bytes.len() / 2, 10] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(read_all(&path).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        assert!(read_all(&path).is_err());
        let mut length = bytes.clone();
        length[LENGTH_AT as usize] ^= 0x01;
        std::fs::write(&path, &length).unwrap();
        assert_eq!(
            read_all(&path).unwrap_err().to_string(),
            "snapshot length does not match"
        );
        std::fs::write(&path, b"not a snapshot at all").unwrap();
        assert!(!has_magic(&path).unwrap());
        assert_eq!(
            read_header(&path).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    /// A snapshot sent in small chunks through openraft's chunked transport arrives whole
    /// at the receiver's final path.
    #[tokio::test]
    async fn a_snapshot_sent_in_small_chunks_arrives_whole() {
        use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.snap");
        let written = entries(3_000);
        write(&source, &written);
        let mut sending = SnapshotFile::from_std(std::fs::File::open(&source).unwrap(), &source);
        let incoming = dir.path().join("incoming.snap");
        let done = dir.path().join("received.snap");
        let mut receiving = SnapshotFile::receive(&incoming, &done).await.unwrap();
        let size = sending.seek(io::SeekFrom::End(0)).await.unwrap();
        let chunk = 1000;
        let mut offset = 0;
        while offset < size {
            sending.seek(io::SeekFrom::Start(offset)).await.unwrap();
            let mut buf = Vec::with_capacity(chunk);
            (&mut sending)
                .take(chunk as u64)
                .read_to_end(&mut buf)
                .await
                .unwrap();
            receiving.seek(io::SeekFrom::Start(offset)).await.unwrap();
            receiving.write_all(&buf).await.unwrap();
            offset += buf.len() as u64;
        }
        assert!(!receiving.is_completed_receive());
        receiving.shutdown().await.unwrap();
        assert!(receiving.is_completed_receive());
        assert_eq!(receiving.path(), done);
        assert!(!incoming.exists());
        assert_eq!(read_all(&done).unwrap(), written);
    }
}
