//! The two adapters between stages and tower: [`Tower`] runs a stage as a
//! tower `Service` (tower-test, `ServiceExt`), [`FromTower`] runs a
//! cloneable tower `Service` as a stage (a mock where dispatch goes). Only
//! the tests compose with tower services today, so only they build this.

use std::task::{Context as TaskContext, Poll};

use kernel_proto::v1::Failure;
use tower::{Service, ServiceExt};

use crate::call::{BoxFuture, Reply};
use crate::invocation::{Invocation, Stage};

/// A [`Stage`] as a tower `Service`, for tower-test and `ServiceExt`.
/// Always ready: stages have no back-pressure of their own.
#[derive(Debug, Clone)]
pub(crate) struct Tower<S>(pub S);

impl<S: Stage> Service<Box<Invocation>> for Tower<S> {
    type Response = Reply;
    type Error = Failure;
    type Future = S::Future;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inv: Box<Invocation>) -> S::Future {
        self.0.run(inv)
    }
}

/// A cloneable tower `Service` as a [`Stage`]: each run clones it, waits
/// until it is ready, and calls it (a mock where dispatch goes).
#[derive(Debug, Clone)]
pub(crate) struct FromTower<S>(pub S);

impl<S> Stage for FromTower<S>
where
    S: Service<Box<Invocation>, Response = Reply, Error = Failure> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Future = BoxFuture<Result<Reply, Failure>>;

    fn run(&self, inv: Box<Invocation>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(svc.oneshot(inv))
    }
}
