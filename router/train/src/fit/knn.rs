//! Training the exemplar memory: exemplar targets (optionally smoothed towards their source's mean) and
//! the optional principal-component projection.

use routemesh_router::predict::{Knn, KnnConfig};

use super::TrainSet;
use super::pca::fit_projection;

/// A memory of the training rows (projected when `config.pca` is below the embedding's dimension); with
/// `config.smooth`, each exemplar's target is pulled towards its source's mean.
pub fn train_knn(data: &TrainSet<'_>, config: KnnConfig) -> Knn {
    let means = if config.smooth > 0.0 {
        data.source_means()
    } else {
        None
    };
    let b = config.smooth.clamp(0.0, 1.0);
    let scores = data
        .quality
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.iter()
                .enumerate()
                .map(|(j, v)| match (v, &means) {
                    (None, _) => f32::NAN,
                    (Some(v), Some(mu)) => ((1.0 - b) * v + b * mu[i][j]) as f32,
                    (Some(v), None) => *v as f32,
                })
                .collect()
        })
        .collect();
    let proj = (config.pca > 0 && config.pca < data.emb.ncols())
        .then(|| fit_projection(data.emb, config.pca, 11));
    let exemplars = match &proj {
        Some(p) => p.apply(data.emb),
        None => data.emb.to_owned(),
    };
    Knn::from_parts(
        data.models.to_vec(),
        config,
        exemplars,
        scores,
        data.prior(),
        proj,
    )
}
