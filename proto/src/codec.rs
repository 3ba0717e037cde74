//! The protobuf codec every `kernel.v1` stream and RPC uses, on both sides:
//! prost's, with small starting buffers.
//!
//! tonic gives each stream an encode and a decode buffer of 8 KiB up front.
//! A node holds thousands of idle streams (a subscription, a provider
//! session each), so those buffers are most of what an idle stream costs;
//! at [`BUFFER`] bytes they start small and grow, once, to what a busy
//! stream's frames need, and keep that size for the stream's life.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// A stream's starting buffer size, each way.
pub const BUFFER: usize = 1024;
/// Bytes a stream encodes before it yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost encoding with [`BUFFER`]-byte starting buffers.
#[derive(Debug, Clone)]
pub struct KernelCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for KernelCodec<T, U> {
    fn default() -> Self {
        KernelCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for KernelCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
