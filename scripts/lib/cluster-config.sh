# Sourced by the scripts that run the three-node cluster of config/cluster/ on other ports.
#
# cluster_config N DIR BASE: node N's config, on stdout, with its data in DIR/nN, client ports
# 638M moved to BASE+M and raft ports 738M to BASE+10+M.
cluster_config() {
  local n=$1 dir=$2 base=$3 m edits
  edits=(-e "s|^data_dir = .*|data_dir = \"$dir/n$n\"|")
  for m in 1 2 3 4; do
    edits+=(-e "s|127.0.0.1:638$m|127.0.0.1:$((base + m))|g")
    edits+=(-e "s|127.0.0.1:738$m|127.0.0.1:$((base + 10 + m))|g")
  done
  sed "${edits[@]}" "config/cluster/node$n.toml"
}
