//! Safetensors files (single or sharded; f32, f16 or bf16) read through mmap, every tensor
//! widened to f32 on request with its shape checked.

use crate::error::{Error, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub struct WeightFiles {
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name -> index into `files`
    index: HashMap<String, usize>,
}

impl WeightFiles {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the file is opened read-only and only read while mapped; a model file
            // changed underneath a running process is outside what we can defend against.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let st = parse(path, &mmap)?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            files.push((path.clone(), mmap));
        }
        Ok(WeightFiles { files, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The tensor `name` as f32, checked to have exactly `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let err = |msg: String| Error::Tensor {
            name: name.to_string(),
            msg,
        };
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| err("not found in the model's safetensors files".into()))?;
        let (path, mmap) = &self.files[i];
        let st = parse(path, mmap)?;
        let view = st.tensor(name).map_err(|e| err(e.to_string()))?;
        if view.shape() != shape {
            return Err(err(format!(
                "has shape {:?}, the config implies {:?}",
                view.shape(),
                shape
            )));
        }
        let bytes = view.data();
        Ok(match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(err(format!(
                    "dtype {other:?} is not supported (f32, f16, bf16)"
                )))
            }
        })
    }
}

fn parse<'a>(path: &Path, mmap: &'a Mmap) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(mmap).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}
