//! One health probe: the check's command run inside the container with
//! Tasks.Exec, as `docker exec` would, with the container's own process
//! settings (user, environment, working directory, capabilities) and only
//! the arguments replaced.

use std::time::Duration;

use crate::containerd::Containerd;

use super::definition::HealthCheck;

/// `Ok` when the command exited 0 within the timeout; otherwise why not.
pub async fn probe(ctrd: &Containerd, name: &str, check: &HealthCheck) -> Result<(), String> {
    let process = process_json(ctrd, name, &check.cmd).await?;
    // Exec ids are per task; a fresh one per probe so a probe that could
    // not be deleted never blocks the next.
    let exec_id = format!(
        "health-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    ctrd.exec_start(name, &exec_id, process)
        .await
        .map_err(|e| format!("exec: {e}"))?;
    let timeout = Duration::from_millis(check.timeout_ms);
    match tokio::time::timeout(timeout, ctrd.exec_wait(name, &exec_id)).await {
        Ok(Ok(0)) => {
            ctrd.exec_remove(name, &exec_id, false).await;
            Ok(())
        }
        Ok(Ok(status)) => {
            ctrd.exec_remove(name, &exec_id, false).await;
            Err(format!("exit status {status}"))
        }
        Ok(Err(e)) => {
            ctrd.exec_remove(name, &exec_id, true).await;
            Err(format!("exec wait: {e}"))
        }
        Err(_) => {
            ctrd.exec_remove(name, &exec_id, true).await;
            Err(format!("no exit within {timeout:?}"))
        }
    }
}

/// The container's spec `process` with `args` replaced, as JSON.
async fn process_json(ctrd: &Containerd, name: &str, args: &[String]) -> Result<Vec<u8>, String> {
    let container = ctrd
        .container(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no container {name}"))?;
    let spec = container
        .spec
        .ok_or_else(|| format!("container {name} has no spec"))?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(&spec.value).map_err(|e| format!("spec of {name}: {e}"))?;
    let mut process = spec
        .get_mut("process")
        .map(serde_json::Value::take)
        .ok_or_else(|| format!("spec of {name} has no process"))?;
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::Value::Bool(false);
    serde_json::to_vec(&process).map_err(|e| e.to_string())
}
