#!/usr/bin/env bash
# EdgeFleet reference server: the fleet repository over smart HTTP (nginx, fcgiwrap,
# `git http-backend`), TLS from a CA made here, one basic-auth credential per node, the
# `edgefleet hook pre-receive` rules, and the artifact store as static files. One machine,
# 127.0.0.1 only, every file under one folder. See docs/deploy/reference-server.md.
#
#   reference-server.sh setup --dir DIR --fleet SRC_GIT_DIR_OR_URL [--artifacts STORE_DIR]
#                             [--port PORT] [--operator NAME] [--children N] [--workers N]
#                             [--edgefleet PATH]
#   reference-server.sh start DIR
#   reference-server.sh stop DIR
#   reference-server.sh users DIR
set -euo pipefail
# nginx and fcgiwrap live in /usr/sbin, which is not on an ordinary user's PATH on Debian.
PATH=$PATH:/usr/sbin:/sbin

PROG=reference-server.sh
USAGE="usage: $PROG setup --dir DIR --fleet SRC [--artifacts STORE] [--port PORT] [--operator NAME] [--children N] [--workers N] [--edgefleet PATH]
       $PROG start DIR | stop DIR | users DIR"
# Node ids are DNS labels (schemas/defs.json); the operator may also use '.' and '_'.
NODE_ID='^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'
OPERATOR_NAME='^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'
# Paths go unquoted into nginx.conf, gitconfig files and credential URLs: a narrow alphabet
# keeps all three correct without escaping rules for each.
SAFE_PATH='^/[A-Za-z0-9._+/-]*$'
START_TIMEOUT=15
STOP_TIMEOUT=15
# The server's settings, read from DIR/server.env by load.
DIR="" PORT="" CA="" OPERATOR="" CHILDREN=""

die() {
  echo "$PROG: $*" >&2
  exit 1
}

usage() {
  echo "$PROG: $*" >&2
  echo "$USAGE" >&2
  exit 2
}

need_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null ||
      die "expected '$tool' on PATH, found none (Debian: apt-get install nginx fcgiwrap openssl git python3)"
  done
}

absolute() {
  (cd "$1" && pwd -P)
}

# --- processes ---------------------------------------------------------------------------

# True when PID is a live process named NAME: a stale pid file may name a reused pid, and a
# zombie still answers `kill -0`.
alive() {
  local pid=$1 name=$2 stat rest
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  read -r stat 2>/dev/null <"/proc/$pid/stat" || return 1
  [[ $stat == "$pid ($name) "* ]] || return 1
  rest=${stat##*) }
  [[ ${rest:0:1} != Z ]]
}

pid_in() {
  cat "$1" 2>/dev/null || true
}

# Live members of a process group; fcgiwrap's preforked children outlive their parent.
group_members() {
  local pgid=$1 f stat rest fields
  for f in /proc/[0-9]*/stat; do
    read -r stat 2>/dev/null <"$f" || continue
    rest=${stat##*) }
    read -r -a fields <<<"$rest"
    if [[ ${fields[2]} == "$pgid" && ${fields[0]} != Z ]]; then
      echo "${stat%% *}"
    fi
  done
}

# Polls, since the processes are not children of this shell: until the function $1 lists none.
wait_gone() {
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while [[ -n $("$1") ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

nginx_pid() {
  local pid
  pid=$(pid_in "$DIR/run/nginx.pid")
  if alive "$pid" nginx; then echo "$pid"; fi
}

fcgiwrap_group() {
  local pid
  pid=$(pid_in "$DIR/run/fcgiwrap.pid")
  if [[ -n $pid ]]; then group_members "$pid"; fi
}

# --- the server folder ---------------------------------------------------------------------

load() {
  [[ -n ${1:-} ]] || usage "expected a server folder, found no argument"
  [[ -f $1/server.env && -f $1/nginx.conf ]] ||
    die "expected $1 to be a folder made by '$PROG setup' (server.env, nginx.conf), found none"
  DIR=$(absolute "$1")
  # shellcheck source=/dev/null
  source "$DIR/server.env"
  local name
  for name in PORT CA OPERATOR CHILDREN WORKERS; do
    [[ -n ${!name:-} ]] || die "expected $name= in $DIR/server.env, found none"
  done
}

main_ref() {
  local ref
  for ref in HEAD refs/heads/main refs/heads/master; do
    if git --git-dir "$1" rev-parse --verify --quiet "$ref^{commit}" >/dev/null; then
      echo "$ref"
      return
    fi
  done
}

# Passwords are 192 random bits, so a fast salted hash ({SSHA}, which nginx's auth_basic
# reads) is as safe as a slow one and costs nginx almost nothing on each request; one Python
# process writes thousands of credentials in well under a second. Node ids come from the file
# names on standard input (`git ls-tree --name-only <main>:nodes`).
add_users() {
  local program
  program=$(
    cat <<'PY'
import base64, hashlib, os, re, secrets, sys

auth, port, ca, operator, node_id = sys.argv[1:]
nodes = []
for name in sys.stdin.read().splitlines():
    if not name.endswith(".yaml"):
        continue
    node = name.removesuffix(".yaml")
    if not re.fullmatch(node_id, node):
        print(f"reference-server.sh: skipped nodes/{name}: expected a node id of a-z, 0-9"
              f" and '-', got {node!r}", file=sys.stderr)
    elif node == operator:
        sys.exit(f"reference-server.sh: expected the operator {operator!r} not to be a node"
                 f" id, found nodes/{name}")
    else:
        nodes.append(node)
htpasswd = os.path.join(auth, "htpasswd")
lines = []
if os.path.exists(htpasswd):
    with open(htpasswd) as f:
        lines = [line for line in f.read().splitlines() if line]
known = {line.split(":", 1)[0] for line in lines}
added = 0
for user in [operator, *nodes]:
    if user in known:
        continue
    password = secrets.token_hex(24)
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    lines.append(f"{user}:{{SSHA}}{base64.b64encode(digest + salt).decode()}")
    base = os.path.join(auth, user)
    fd = os.open(base + ".credentials", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"https://{user}:{password}@127.0.0.1:{port}\n")
    with open(base + ".gitconfig", "w") as f:
        f.write(
            f"[http]\n\tsslCAInfo = {ca}\n"
            f"[credential]\n\thelper = store --file {base}.credentials\n"
        )
    known.add(user)
    added += 1
# nginx reads the file on every request: it must never see half of it.
fd = os.open(htpasswd + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    f.write("".join(line + "\n" for line in lines))
os.replace(htpasswd + ".tmp", htpasswd)
print(f"users: {added} added, {len(lines)} in {htpasswd}")
PY
  )
  python3 -c "$program" "$DIR/auth" "$PORT" "$DIR/tls/ca.pem" "$OPERATOR" "$NODE_ID"
}

cmd_users() {
  load "${1:-}"
  [[ $# -le 1 ]] || usage "expected one argument (DIR), found $#"
  need_tools git python3
  local repo=$DIR/git/fleet.git main
  main=$(main_ref "$repo")
  # A repository without main (yet) or without nodes/ has only the operator.
  { [[ -z $main ]] || git --git-dir "$repo" ls-tree --name-only "$main:nodes" 2>/dev/null || true; } | add_users
}

# The backend's and the hook's PATH: the system's, plus wherever this machine's git is.
server_path() {
  local path=/usr/local/bin:/usr/bin:/bin git_dir
  git_dir=$(dirname "$(command -v git)")
  [[ :$path: == *":$git_dir:"* ]] || path=$git_dir:$path
  echo "$path"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

make_tls() {
  local tls=$DIR/tls
  (
    umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 3650 \
      -subj "/CN=EdgeFleet reference server CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
      -subj "/CN=localhost" -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
      "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid:always" >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 -extfile "$tls/server.ext" \
      -out "$tls/server.pem" 2>/dev/null
  ) || die "expected openssl to make the CA and server certificate in $tls, found it failed"
  rm -f "$tls/server.csr" "$tls/server.ext"
  chmod 0644 "$tls/ca.pem" "$tls/server.pem"
}

write_nginx_conf() {
  local store=$1 workers=$2 operator=$3 user_line="" artifacts rlimit="" hard
  # As root, nginx's workers would otherwise switch to 'nobody', who cannot read the files
  # of the user who set the server up; as anyone else the directive is ignored with a warning.
  if ((EUID == 0)); then user_line="user $(id -un) $(id -gn);"; fi
  # Each connection to git holds two descriptors (client and fcgiwrap); raise the soft limit
  # where the hard one allows, or nginx warns and stops accepting near 1024.
  hard=$(ulimit -Hn)
  if [[ $hard == unlimited ]] || ((hard >= 10240)); then rlimit="worker_rlimit_nofile 10240;"; fi
  if [[ -n $store ]]; then
    artifacts="location ~ \"^/artifacts/(sha256/[0-9a-f]{64})\$\" {
            alias $store/\$1;
            limit_except GET { deny all; }
            add_header Cache-Control \"public, max-age=31536000, immutable\";
        }"
  else
    artifacts="# No artifact store was given to setup (--artifacts): /artifacts/ answers 404."
  fi
  local template
  template=$(
    cat <<'NGINX'
# Made by reference-server.sh setup. Every path is under @DIR@.
@USER@
worker_processes @WORKERS@;
@RLIMIT@
pid @DIR@/run/nginx.pid;
lock_file @DIR@/run/nginx.lock;
error_log @DIR@/logs/error.log warn;

events {
    worker_connections 4096;
}

http {
    # Tab-separated; field order documented in docs/deploy/reference-server.md.
    log_format edgefleet '$time_iso8601\t$remote_user\t$request_method\t$request_uri\t$status\t$bytes_sent\t$request_time\t$request_length\t$connection\t$connection_requests\t$ssl_session_reused';
    access_log @DIR@/logs/access.log edgefleet;

    client_body_temp_path @DIR@/tmp/client_body;
    fastcgi_temp_path @DIR@/tmp/fastcgi;
    proxy_temp_path @DIR@/tmp/proxy;
    uwsgi_temp_path @DIR@/tmp/uwsgi;
    scgi_temp_path @DIR@/tmp/scgi;

    default_type application/octet-stream;
    sendfile on;
    server_tokens off;
    keepalive_timeout 75s;

    # git's push protocol lists every ref of the repository before each push: with one status
    # branch per node, that grows with the fleet (700 kB at 10,000 nodes). A node is shown only
    # its own status branch (receive.hideRefs, per request); the operator sees everything,
    # because it lands other nodes' status carried back on sticks, and a hidden ref cannot be
    # pushed to.
    map $remote_user $edgefleet_hidden {
        default refs/heads/status/;
        "@OPERATOR@" refs/edgefleet/hides-nothing/;
    }

    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name localhost 127.0.0.1;
        ssl_certificate @DIR@/tls/server.pem;
        ssl_certificate_key @DIR@/tls/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:edgefleet_tls:10m;
        ssl_session_timeout 1h;

        # Only git's smart-HTTP endpoints: no dumb-protocol file reads.
        location ~ "^/git/(fleet\.git/(info/refs|git-upload-pack|git-receive-pack))$" {
            auth_basic "EdgeFleet fleet repository";
            auth_basic_user_file @DIR@/auth/htpasswd;
            client_max_body_size 0;
            fastcgi_read_timeout 300s;
            fastcgi_send_timeout 300s;
            fastcgi_param SCRIPT_FILENAME @BACKEND@;
            fastcgi_param GIT_PROJECT_ROOT @DIR@/git;
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param PATH_INFO /$1;
            # The hook (edgefleet hook pre-receive --require-user) reads the pusher from here.
            fastcgi_param REMOTE_USER $remote_user;
            fastcgi_param GIT_CONFIG_COUNT 2;
            fastcgi_param GIT_CONFIG_KEY_0 receive.hideRefs;
            fastcgi_param GIT_CONFIG_VALUE_0 $edgefleet_hidden;
            fastcgi_param GIT_CONFIG_KEY_1 receive.hideRefs;
            fastcgi_param GIT_CONFIG_VALUE_1 !refs/heads/status/$remote_user;
            # With fcgiwrap's own environment (emptied by start), all the backend and the hook
            # see: a known PATH, and a HOME without anyone's ~/.gitconfig.
            fastcgi_param PATH @PATH@;
            fastcgi_param HOME @DIR@/home;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param SERVER_NAME $server_name;
            fastcgi_param SERVER_PORT $server_port;
            fastcgi_param HTTPS on;
            fastcgi_pass unix:@DIR@/run/fcgiwrap.sock;
        }

        # Content-addressed and digest-checked by every node: no credential needed.
        @ARTIFACTS@

        location / {
            return 404;
        }
    }
}
NGINX
  )
  local backend
  backend="$(git --exec-path)/git-http-backend"
  [[ -x $backend ]] || die "expected git http-backend at $backend, found none"
  template=${template//@USER@/"$user_line"}
  template=${template//@WORKERS@/"$workers"}
  template=${template//@RLIMIT@/"$rlimit"}
  template=${template//@PORT@/"$PORT"}
  template=${template//@BACKEND@/"$backend"}
  template=${template//@PATH@/"$(server_path)"}
  template=${template//@ARTIFACTS@/"$artifacts"}
  template=${template//@OPERATOR@/"$operator"}
  template=${template//@DIR@/"$DIR"}
  printf '%s\n' "$template" >"$DIR/nginx.conf"
}

install_repository() {
  local src=$1 edgefleet=$2 repo=$DIR/git/fleet.git
  git clone --quiet --mirror "$src" "$repo" 2>"$DIR/logs/setup.log" ||
    die "expected a git repository at $src, found git clone failed: $(tail -n 1 "$DIR/logs/setup.log")"
  git --git-dir "$repo" config --remove-section remote.origin
  # Nodes fetch with --filter=blob:none and then single blobs by id; pushes over HTTP need
  # receivepack (git http-backend otherwise allows them only with REMOTE_USER set).
  git --git-dir "$repo" config http.receivepack true
  git --git-dir "$repo" config uploadpack.allowFilter true
  git --git-dir "$repo" config uploadpack.allowAnySHA1InWant true
  # The hook reads the fleet from HEAD, then main, then master; a mirror's HEAD may name a
  # branch the source never had (an empty source, or one whose default branch is unborn).
  if ! git --git-dir "$repo" rev-parse --verify --quiet "HEAD^{commit}" >/dev/null; then
    local branch=main
    if git --git-dir "$repo" rev-parse --verify --quiet refs/heads/master >/dev/null &&
      ! git --git-dir "$repo" rev-parse --verify --quiet refs/heads/main >/dev/null; then
      branch=master
    fi
    git --git-dir "$repo" symbolic-ref HEAD "refs/heads/$branch"
  fi
  printf '#!/bin/sh\n# Made by reference-server.sh setup: a hook runs with the server'"'"'s PATH, not yours.\nexec %s hook pre-receive --require-user\n' \
    "$edgefleet" >"$repo/hooks/pre-receive"
  chmod 0755 "$repo/hooks/pre-receive"
}

cmd_setup() {
  local dir="" src="" store="" port=0 operator=operator children=8 workers=2 edgefleet=""
  while (($#)); do
    case $1 in
      --dir | --fleet | --artifacts | --port | --operator | --children | --workers | --edgefleet)
        (($# >= 2)) || usage "expected a value after $1, found none"
        case $1 in
          --dir) dir=$2 ;;
          --fleet) src=$2 ;;
          --artifacts) store=$2 ;;
          --port) port=$2 ;;
          --operator) operator=$2 ;;
          --children) children=$2 ;;
          --workers) workers=$2 ;;
          --edgefleet) edgefleet=$2 ;;
        esac
        shift 2
        ;;
      *) usage "expected an option of setup, found '$1'" ;;
    esac
  done
  [[ -n $dir ]] || usage "expected --dir DIR, found none"
  [[ -n $src ]] || usage "expected --fleet SRC_GIT_DIR_OR_URL, found none"
  if [[ ! $port =~ ^[0-9]+$ ]] || ((port > 65535)); then usage "expected --port 0..65535, found '$port'"; fi
  [[ $children =~ ^[1-9][0-9]*$ ]] || usage "expected --children N >= 1, found '$children'"
  [[ $workers =~ ^[1-9][0-9]*$ ]] || usage "expected --workers N >= 1, found '$workers'"
  [[ $operator =~ $OPERATOR_NAME ]] ||
    usage "expected --operator of letters, digits, '.', '_', '-', found '$operator'"
  need_tools nginx fcgiwrap openssl git python3
  if [[ -z $edgefleet ]]; then
    edgefleet=$(command -v edgefleet) ||
      die "expected 'edgefleet' on PATH or --edgefleet PATH, found neither"
  fi
  [[ -x $edgefleet ]] || die "expected an executable edgefleet at $edgefleet, found none"
  edgefleet=$(absolute "$(dirname "$edgefleet")")/$(basename "$edgefleet")
  [[ $edgefleet =~ $SAFE_PATH ]] || die "expected the edgefleet path of letters, digits and ._+-/, found '$edgefleet'"
  # A hook that cannot run refuses every push, with a message nobody connects to its cause.
  "$edgefleet" hook pre-receive --help >/dev/null 2>&1 ||
    die "expected $edgefleet to run as $(id -un) (the hook calls it), found it fails: $("$edgefleet" --help 2>&1 | tail -n 1)"
  if [[ -e $dir ]]; then
    [[ -d $dir && -z $(ls -A "$dir") ]] || die "expected --dir to be absent or an empty folder, found $dir not empty"
  fi
  mkdir -p "$dir"
  DIR=$(absolute "$dir")
  # Half a server is worse than none: a failed setup leaves the folder empty for the next try.
  trap 'rm -rf "${DIR:?}"/* "${DIR:?}"/.[!.]* 2>/dev/null' EXIT
  [[ $DIR =~ $SAFE_PATH ]] || die "expected --dir of letters, digits and ._+-/ only, found '$DIR'"
  # A Unix socket's path is at most 107 bytes.
  ((${#DIR} + 21 <= 107)) || die "expected --dir of at most 86 characters (for run/fcgiwrap.sock), found ${#DIR}"
  if [[ -n $store ]]; then
    [[ -d $store ]] || die "expected --artifacts to be a store folder (sha256/<digest>), found no folder $store"
    store=$(absolute "$store")
    [[ $store =~ $SAFE_PATH ]] || die "expected --artifacts of letters, digits and ._+-/ only, found '$store'"
  fi
  if [[ -d $src ]]; then src=$(absolute "$src"); fi
  if ((port == 0)); then port=$(free_port); fi
  PORT=$port
  mkdir -p "$DIR"/{git,tls,auth,run,logs,tmp,home}
  chmod 0700 "$DIR/auth" "$DIR/tls"

  install_repository "$src" "$edgefleet"
  make_tls
  write_nginx_conf "$store" "$workers" "$operator"
  {
    echo "# Made by reference-server.sh setup; read by start, stop, users and the tests."
    echo "PORT=$PORT"
    echo "GIT_URL=https://127.0.0.1:$PORT/git/fleet.git"
    echo "ARTIFACTS_URL=https://127.0.0.1:$PORT/artifacts/"
    echo "CA=$DIR/tls/ca.pem"
    echo "OPERATOR=$operator"
    echo "CHILDREN=$children"
    echo "WORKERS=$workers"
    echo "EDGEFLEET=$edgefleet"
    echo "ARTIFACTS_DIR=$store"
  } >"$DIR/server.env"
  cmd_users "$DIR"
  trap - EXIT
  echo "setup: $DIR (https://127.0.0.1:$PORT/git/fleet.git); next: $PROG start $DIR"
}

# --- start and stop ------------------------------------------------------------------------

# fcgiwrap ignores SIGCHLD, so the kernel reaps git http-backend, upload-pack, receive-pack
# and the hook without adding their CPU time to anyone's cutime: only a cgroup of their own
# counts them. Where this user may make one (root, or a delegated cgroup v2 subtree), the
# server runs in it and run/cgroup names it; elsewhere there is no such file.
cgroup2_mount() {
  awk '{ for (i = 7; i < NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' \
    /proc/self/mountinfo
}

own_cgroup() {
  local mount rel cg
  mount=$(cgroup2_mount)
  rel=$(sed -n 's/^0:://p' /proc/self/cgroup)
  [[ -n $mount && -n $rel ]] || return 0
  if [[ -f $DIR/run/cgroup ]]; then
    cat "$DIR/run/cgroup"
    return
  fi
  cg="${mount%/}${rel%/}/edgefleet-reference-$(printf '%s' "$DIR" | cksum | cut -d ' ' -f 1)"
  if mkdir -p "$cg" 2>/dev/null && [[ -w $cg/cgroup.procs ]]; then echo "$cg"; fi
}

join_cgroup() {
  if [[ -n $1 ]]; then echo 0 >"$1/cgroup.procs" 2>/dev/null || true; fi
}

# Only when both made it in does run/cgroup promise a count of the whole server.
check_cgroup() {
  local cg=$1 pid rel
  [[ -n $cg ]] || return 0
  rel=${cg#"$(cgroup2_mount)"}
  for pid in "${@:2}"; do
    if [[ $(sed -n 's/^0:://p' "/proc/$pid/cgroup" 2>/dev/null) != "$rel" ]]; then
      rm -f "$DIR/run/cgroup"
      rmdir "$cg" 2>/dev/null || true
      return 0
    fi
  done
  echo "$cg" >"$DIR/run/cgroup"
}

# A cgroup goes only once its last process is reaped, and an init that reaps lazily (some
# containers) keeps the exited ones as zombies a while; past a few seconds, leave it empty.
remove_cgroup() {
  local deadline=$((SECONDS + 3))
  until rmdir "$1" 2>/dev/null || [[ ! -d $1 ]]; do
    ((SECONDS < deadline)) || return 0
    sleep 0.05
  done
}

tls_ready() {
  timeout 5 openssl s_client -connect "127.0.0.1:$PORT" -servername localhost \
    -CAfile "$CA" -verify_return_error -brief </dev/null >/dev/null 2>&1
}

cmd_start() {
  load "${1:-}"
  [[ $# -le 1 ]] || usage "expected one argument (DIR), found $#"
  need_tools nginx fcgiwrap openssl
  mkdir -p "$DIR"/{run,logs,tmp,home}
  local cgroup
  cgroup=$(own_cgroup)
  local sock=$DIR/run/fcgiwrap.sock pid deadline
  if [[ -z $(fcgiwrap_group) ]]; then
    rm -f "$sock"
    # Its own process group, so that stop reaches the preforked children, which outlive a
    # parent killed alone; stdio away from the caller, who may be waiting on a pipe.
    (
      join_cgroup "$cgroup"
      # fcgiwrap hands its own environment on to git and the hook: give it none of ours.
      exec env -i PATH="$(server_path)" HOME="$DIR/home" LANG=C.UTF-8 \
        setsid "$(command -v fcgiwrap)" -s "unix:$sock" -c "$CHILDREN"
    ) </dev/null >>"$DIR/logs/fcgiwrap.log" 2>&1 &
    pid=$!
    deadline=$((SECONDS + START_TIMEOUT))
    until [[ -S $sock ]]; do
      kill -0 "$pid" 2>/dev/null ||
        die "expected fcgiwrap to listen on $sock, found it exited: $(tail -n 3 "$DIR/logs/fcgiwrap.log")"
      ((SECONDS < deadline)) || die "expected fcgiwrap to make $sock within ${START_TIMEOUT}s, found none"
      sleep 0.02
    done
    # The subshell execs env, env execs setsid, and setsid execs fcgiwrap in place (a
    # background job never leads its group): $! is fcgiwrap.
    alive "$pid" fcgiwrap || die "expected fcgiwrap as process $pid, found $(cat "/proc/$pid/comm" 2>/dev/null || echo none)"
    echo "$pid" >"$DIR/run/fcgiwrap.pid"
  fi
  if [[ -z $(nginx_pid) ]]; then
    # -e: messages from before nginx.conf is read; stderr: what nginx says before even that.
    # shellcheck disable=SC2094
    (
      join_cgroup "$cgroup"
      exec nginx -c "$DIR/nginx.conf" -p "$DIR" -e "$DIR/logs/error.log"
    ) </dev/null >>"$DIR/logs/error.log" 2>&1 ||
      die "expected nginx to start, found it failed; $DIR/logs/error.log ends: $(tail -n 3 "$DIR/logs/error.log" | tr '\n' ' ')"
  fi
  deadline=$((SECONDS + START_TIMEOUT))
  # The daemon writes its pid file a moment after the command that forked it returns.
  until [[ -n $(nginx_pid) ]]; do
    ((SECONDS < deadline)) ||
      die "expected nginx's pid in $DIR/run/nginx.pid, found none; $DIR/logs/error.log ends: $(tail -n 3 "$DIR/logs/error.log" | tr '\n' ' ')"
    sleep 0.02
  done
  until tls_ready; do
    if ((SECONDS >= deadline)); then
      die "expected TLS on 127.0.0.1:$PORT within ${START_TIMEOUT}s, found none; $DIR/logs/error.log ends: $(tail -n 3 "$DIR/logs/error.log" | tr '\n' ' ')"
    fi
    [[ -n $(nginx_pid) ]] ||
      die "expected nginx to keep running, found it exited; $DIR/logs/error.log ends: $(tail -n 3 "$DIR/logs/error.log" | tr '\n' ' ')"
    sleep 0.05
  done
  pid=$(nginx_pid)
  check_cgroup "$cgroup" "$pid" "$(pid_in "$DIR/run/fcgiwrap.pid")"
  echo "start: nginx $pid, fcgiwrap $(pid_in "$DIR/run/fcgiwrap.pid") on https://127.0.0.1:$PORT/"
}

cmd_stop() {
  load "${1:-}"
  [[ $# -le 1 ]] || usage "expected one argument (DIR), found $#"
  local pid pgid
  pid=$(nginx_pid)
  if [[ -n $pid ]]; then
    # QUIT lets requests in flight finish (a push half-received is refused by git anyway).
    kill -QUIT "$pid" 2>/dev/null || true
    if ! wait_gone nginx_pid; then
      kill -TERM "$pid" 2>/dev/null || true
      wait_gone nginx_pid || die "expected nginx $pid to exit within $((2 * STOP_TIMEOUT))s, found it running"
    fi
  fi
  pgid=$(pid_in "$DIR/run/fcgiwrap.pid")
  if [[ -n $(fcgiwrap_group) ]]; then
    kill -TERM -- "-$pgid" 2>/dev/null || true
    if ! wait_gone fcgiwrap_group; then
      kill -KILL -- "-$pgid" 2>/dev/null || true
      wait_gone fcgiwrap_group || die "expected fcgiwrap group $pgid to exit, found it running"
    fi
  fi
  if [[ -f $DIR/run/cgroup ]]; then remove_cgroup "$(cat "$DIR/run/cgroup")"; fi
  rm -f "$DIR/run/nginx.pid" "$DIR/run/fcgiwrap.pid" "$DIR/run/fcgiwrap.sock" "$DIR/run/cgroup"
  echo "stop: $DIR stopped"
}

main() {
  (($#)) || usage "expected a command (setup, start, stop, users), found none"
  local cmd=$1
  shift
  case $cmd in
    setup) cmd_setup "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    users) cmd_users "$@" ;;
    -h | --help) echo "$USAGE" ;;
    *) usage "expected a command (setup, start, stop, users), found '$cmd'" ;;
  esac
}

main "$@"
