// Package workerconfig owns the worker's configuration: the YAML file
// given to `worker --config worker.yaml`, the flags and environment
// variables that override it, the detection of the machine's resources
// (CPU cores, memory, GPUs via nvidia-smi), and validation that names the
// field and the reason for every refusal.
//
// Precedence, lowest first: defaults, then the file, then flags, then the
// environment. Values nobody set that the machine can tell (host name, CPU
// cores, memory, GPUs) are detected last. Every setting has a flag and an
// environment variable, listed by Settings:
//
//	key                   flag                 environment
//	id                    --id                 SWITCHYARD_WORKER_ID
//	host                  --host               SWITCHYARD_WORKER_HOST
//	coordinators          --coordinators       SWITCHYARD_WORKER_COORDINATORS      (comma-separated)
//	etcd_endpoints        --etcd-endpoints     SWITCHYARD_WORKER_ETCD_ENDPOINTS    (comma-separated)
//	nats_url              --nats-url           SWITCHYARD_WORKER_NATS_URL
//	advertise_address     --advertise-address  SWITCHYARD_WORKER_ADVERTISE_ADDRESS
//	listen_address        --listen-address     SWITCHYARD_WORKER_LISTEN_ADDRESS
//	metrics_address       --metrics-addr       SWITCHYARD_WORKER_METRICS_ADDR
//	resources.cpu_cores   --cpu-cores          SWITCHYARD_WORKER_CPU_CORES
//	resources.memory_mib  --memory-mib         SWITCHYARD_WORKER_MEMORY_MIB
//	resources.gpus        --gpus               SWITCHYARD_WORKER_GPUS
//	slots                 --slots              SWITCHYARD_WORKER_SLOTS
//	labels                --labels             SWITCHYARD_WORKER_LABELS            (k=v,k=v; merged key by key)
//	storage_path          --storage-path       SWITCHYARD_WORKER_STORAGE_PATH
//	allowed_paths         --allowed-paths      SWITCHYARD_WORKER_ALLOWED_PATHS     (comma-separated)
//	trainer               --trainer            SWITCHYARD_WORKER_TRAINER
//	tls.ca                --tls-ca             SWITCHYARD_WORKER_TLS_CA
//	tls.cert              --tls-cert           SWITCHYARD_WORKER_TLS_CERT
//	tls.key               --tls-key            SWITCHYARD_WORKER_TLS_KEY
//	data_plane_tls        --data-plane-tls     SWITCHYARD_WORKER_DATA_PLANE_TLS    (true/false)
//	allow_commands        --allow-commands     SWITCHYARD_WORKER_ALLOW_COMMANDS    (true/false)
//	enforce_memory        --enforce-memory     SWITCHYARD_WORKER_ENFORCE_MEMORY    (true/false)
//	drain_seconds         --drain-seconds      SWITCHYARD_WORKER_DRAIN_SECONDS
//	lease_ttl_seconds     --lease-ttl-seconds  SWITCHYARD_WORKER_LEASE_TTL_SECONDS
//	insecure              --insecure           SWITCHYARD_WORKER_INSECURE          (true/false)
//
// Defaults: listen_address 127.0.0.1:7070; advertise_address the listen
// address when it names a specific host and port; host the machine's host
// name; id "<host>-<advertise port>" (stable across restarts, distinct for
// several workers on one host); cpu_cores and memory_mib detected; gpus -1,
// meaning detect with `nvidia-smi --query-gpu=index,uuid,name,memory.total
// --format=csv,noheader` when nvidia-smi is on PATH, else none
// (resources.gpu_indices keeps only the GPUs it names, or names the
// declared ones; the detected GPUs are registered and shown by `cluster
// status`);
// slots 0, meaning one per GPU, or 1 without GPUs (slot k gets GPUs
// k*g..k*g+g-1 of g = gpus/slots, 1/slots of the cores and memory, and
// listens on listen_address's port + k); allow_commands false;
// enforce_memory true (a rank whose processes hold more resident
// anonymous and shared memory than its job's resources.memory_mib is
// killed, its job told why);
// lease_ttl_seconds 10; drain_seconds 60; nats_url empty (no events or metrics are published);
// trainer empty, meaning the `switchyard` binary in the directory of the
// running worker executable when it is there, else `switchyard` on PATH
// (resolved by Config.TrainerPath when the worker starts, not by Load).
// coordinators, etcd_endpoints and storage_path (absolute) are required.
//
// Security rule: a listen address that is not loopback needs tls.ca,
// tls.cert and tls.key, unless insecure is true.
//
// The package reads files, the environment (through the function it is
// given) and runs nvidia-smi; it does not open network connections or
// register the worker.
package workerconfig
