//! One Parquet file written a row group at a time: rows are buffered column by column, and
//! every `limit` rows the buffer goes out as a row group through parquet's low-level column
//! writer, so a table holds at most one row group in memory whatever its length.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::{ColumnPath, SchemaDescriptor};

use super::Error;

/// A value of one leaf column.
#[derive(Clone, Debug)]
pub enum Value {
    /// `int64`.
    I64(i64),
    /// `int32`.
    I32(i32),
    /// `double`.
    F64(f64),
    /// `boolean`.
    Bool(bool),
    /// `binary (UTF8)`.
    Str(ByteArray),
}

/// A leaf column's buffered values and levels.
enum Values {
    I64(Vec<i64>),
    I32(Vec<i32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    Str(Vec<ByteArray>),
}

struct Column {
    values: Values,
    /// Definition levels (kept only when the column can be null or is inside a list).
    def: Vec<i16>,
    /// Repetition levels (kept only inside a list).
    rep: Vec<i16>,
    max_def: i16,
    max_rep: i16,
}

/// A Parquet file being written.
pub struct Table {
    path: PathBuf,
    writer: SerializedFileWriter<BufWriter<File>>,
    columns: Vec<Column>,
    /// Rows buffered.
    rows: usize,
    /// Rows per row group.
    limit: usize,
    /// Rows written so far (buffered ones included).
    total: u64,
}

/// Columns that count up (event numbers, times): delta-coded, no dictionary.
const ASCENDING: [&str; 2] = ["event", "time"];
/// Columns of nearly unique values (arguments, page addresses): no dictionary to fill only
/// to give it up.
const SCATTERED: [&str; 2] = ["arg", "page"];

/// Writer properties: zstd at `level`, page statistics (the default) for predicate pushdown,
/// dictionaries for the columns of few values (kinds, threads, bins, sizes, sites).
pub fn properties(level: i32) -> Result<Arc<WriterProperties>, Error> {
    let level = ZstdLevel::try_new(level).map_err(Error::Parquet)?;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_created_by(format!("heaplens {}", env!("CARGO_PKG_VERSION")));
    for c in ASCENDING {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(c), false)
            .set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED);
    }
    for c in SCATTERED {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c), false);
    }
    Ok(Arc::new(b.build()))
}

impl Table {
    /// Creates `dir/part-0.parquet` (and `dir`) for the schema `message` (Parquet's message
    /// type syntax), flushing a row group every `limit` rows.
    pub fn create(
        dir: &Path,
        message: &str,
        props: &Arc<WriterProperties>,
        limit: usize,
    ) -> Result<Self, Error> {
        let schema = Arc::new(parse_message_type(message).map_err(Error::Parquet)?);
        let descr = SchemaDescriptor::new(Arc::clone(&schema));
        let columns = descr
            .columns()
            .iter()
            .map(|c| {
                use parquet::basic::Type as T;
                let values = match c.physical_type() {
                    T::INT64 => Values::I64(Vec::new()),
                    T::INT32 => Values::I32(Vec::new()),
                    T::DOUBLE => Values::F64(Vec::new()),
                    T::BOOLEAN => Values::Bool(Vec::new()),
                    _ => Values::Str(Vec::new()),
                };
                Column {
                    values,
                    def: Vec::new(),
                    rep: Vec::new(),
                    max_def: c.max_def_level(),
                    max_rep: c.max_rep_level(),
                }
            })
            .collect();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("part-0.parquet");
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let writer = SerializedFileWriter::new(
            BufWriter::with_capacity(1 << 20, file),
            schema,
            props.clone(),
        )
        .map_err(Error::Parquet)?;
        Ok(Self {
            path,
            writer,
            columns,
            rows: 0,
            limit: limit.max(1),
            total: 0,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets leaf column `col` of the current row, a top-level column (`None`: null).
    pub fn set(&mut self, col: usize, v: Option<Value>) {
        let max_def = self.columns[col].max_def;
        let def = if v.is_some() { max_def } else { max_def - 1 };
        self.put(col, v, def, 0);
    }

    /// Appends a value to leaf column `col` with its levels (columns inside a list).
    pub fn put(&mut self, col: usize, v: Option<Value>, def: i16, rep: i16) {
        let c = &mut self.columns[col];
        if c.max_def > 0 {
            c.def.push(def);
        }
        if c.max_rep > 0 {
            c.rep.push(rep);
        }
        match (&mut c.values, v) {
            (Values::I64(b), Some(Value::I64(x))) => b.push(x),
            (Values::I32(b), Some(Value::I32(x))) => b.push(x),
            (Values::F64(b), Some(Value::F64(x))) => b.push(x),
            (Values::Bool(b), Some(Value::Bool(x))) => b.push(x),
            (Values::Str(b), Some(Value::Str(x))) => b.push(x),
            (_, None) => {}
            (_, Some(v)) => debug_assert!(false, "column {col} of {:?} given {v:?}", self.path),
        }
    }

    /// Ends the current row; a full buffer goes out as a row group.
    pub fn end_row(&mut self) -> Result<(), Error> {
        self.rows += 1;
        self.total += 1;
        if self.rows >= self.limit {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered rows as one row group.
    fn flush(&mut self) -> Result<(), Error> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut rg = self.writer.next_row_group().map_err(Error::Parquet)?;
        for c in &mut self.columns {
            let Some(mut w) = rg.next_column().map_err(Error::Parquet)? else {
                break;
            };
            let def = (c.max_def > 0).then_some(&c.def[..]);
            let rep = (c.max_rep > 0).then_some(&c.rep[..]);
            match &mut c.values {
                Values::I64(v) => {
                    w.typed::<Int64Type>().write_batch(v, def, rep)?;
                    v.clear();
                }
                Values::I32(v) => {
                    w.typed::<Int32Type>().write_batch(v, def, rep)?;
                    v.clear();
                }
                Values::F64(v) => {
                    w.typed::<DoubleType>().write_batch(v, def, rep)?;
                    v.clear();
                }
                Values::Bool(v) => {
                    w.typed::<BoolType>().write_batch(v, def, rep)?;
                    v.clear();
                }
                Values::Str(v) => {
                    w.typed::<ByteArrayType>().write_batch(v, def, rep)?;
                    v.clear();
                }
            }
            w.close()?;
            c.def.clear();
            c.rep.clear();
        }
        rg.close()?;
        self.rows = 0;
        Ok(())
    }

    /// Writes what is buffered and the footer; returns the rows written.
    pub fn close(mut self) -> Result<u64, Error> {
        self.flush()?;
        self.writer.close()?;
        Ok(self.total)
    }
}

/// A string value.
pub fn text(s: impl Into<Vec<u8>>) -> Option<Value> {
    Some(Value::Str(ByteArray::from(s.into())))
}

/// An `int64` value (unsigned values are stored bit for bit: addresses stay below 2^63).
pub fn int(x: u64) -> Option<Value> {
    Some(Value::I64(x as i64))
}

/// An `int32` value.
pub fn small(x: u32) -> Option<Value> {
    Some(Value::I32(i32::try_from(x).unwrap_or(i32::MAX)))
}
