"""Channel sandboxes: real HTTP servers speaking each channel's merchant protocol (see
`base`). `SANDBOXES` names the channel modules; `run` starts them."""
