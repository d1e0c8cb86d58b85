# Shell quoting shared by the launch scripts (sourced, not run).
#
# join_quoted prints a command line a user can copy and paste: the dry runs print it, and
# tpu_vm.sh ships it to the workers inside an ssh --command.

# Quotes one word for a POSIX shell, leaving plain words (and `--opt=` prefixes) readable:
# double quotes where nothing in the word is special inside them, else single quotes.
quote() {
  local word="$1" prefix=""
  if [[ "$word" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    prefix="${BASH_REMATCH[1]}" word="${BASH_REMATCH[2]}"
  fi
  if [[ -n "$word" && "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s%s' "$prefix" "$word"
  elif [[ "$word" != *[\$\`\"\\!]* ]]; then
    printf '%s"%s"' "$prefix" "$word"
  else
    printf "%s'%s'" "$prefix" "${word//\'/\'\\\'\'}"
  fi
}

# Joins the words into one shell command line (each word quoted as needed).
join_quoted() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}
