module podview

go 1.19
