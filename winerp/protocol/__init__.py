"""winerp's own protocol, sans-IO: the frames (`frames`), the codecs of the two dialects (`codec`,
`legacy`), the client's side (`client`) and the hub's router (`router`)."""
